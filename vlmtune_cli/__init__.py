"""vlmtune: fine-tune vision-language models from TOML recipes, here or as SLURM job chains."""

__version__ = "0.1.0"
