#!/bin/bash

# Parameters
#SBATCH --account=proj
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=8
#SBATCH --dependency=afterok:1234
#SBATCH --gpus-per-node=4
#SBATCH --job-name=vlmtune-smoke-2of3
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --mail-type=END
#SBATCH --mem=64G
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=/runs/smoke/slurm/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --signal=USR2@300
#SBATCH --time=1560
#SBATCH --wckey=submitit

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /runs/smoke/slurm/%j_%t_log.out --kill-on-bad-exit=1 /venv/bin/python -u -m submitit.core._submit /runs/smoke/slurm
