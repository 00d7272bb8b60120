"""`vlmtune benchmark`: parsing and scoring per format, the comparison table and report, choosing what to
evaluate, bad input, and end to end on a smoke run trained once for this module."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vlmtune_cli.cli import app
from vlmtune_cli.config.recipe import dump_recipe, load_recipe
from vlmtune_cli.config.schema import DataSection
from vlmtune_cli.data.synthetic import make_sample
from vlmtune_cli.errors import UsageError
from vlmtune_cli.eval import benchmark, report
from vlmtune_cli.eval.scoring import score
from vlmtune_cli.models.families import FAMILIES

from ..conftest import RECIPES

runner = CliRunner()
SMOKE = RECIPES / "smoke.toml"
# 16 samples → 13 train, 3 test; 4 steps at batch 4 with a checkpoint every 2 steps, loss logged every step.
SMALL_RUN = [
    "training.max_steps=4",
    "data.num_samples=16",
    "data.max_samples=16",
    "training.save_steps=2",
    "training.logging_steps=1",
    "training.eval_steps=100",
]


class _ImageProcessor:
    size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    patch_size, merge_size = 14, 2


class _Processor:
    """Enough of a Qwen processor for `processor_resized_size`."""

    image_processor = _ImageProcessor()


def _answers(samples: list[dict]) -> list[str]:
    return [s["messages"][-1]["content"][0]["text"] for s in samples]


# --- scoring: parser and metrics together ------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["qwen2-vl-grid", "qwen2.5-vl-json", "plain"])
def test_gold_answers_score_perfectly_in_every_box_format(fmt: str) -> None:
    # 100x100 max pixels: Qwen2.5-VL JSON coordinates are then in a much smaller resized image.
    data = DataSection(min_pixels=28 * 28, max_pixels=100 * 100)
    samples = [make_sample("synthetic-detection", i, data, fmt, _Processor()) for i in range(4)]
    rows, metrics, examples = score("detection", fmt, _Processor(), data, samples, ["p"] * 4, _answers(samples))
    assert metrics["accuracy_50"] == 1.0 and metrics["map_50"] == 1.0 and metrics["parse_failure_rate"] == 0.0
    assert metrics["mean_iou"] > 0.9  # JSON coordinates round in the resized image
    for row, sample in zip(rows, samples, strict=True):
        truth = sample["target"]["boxes"][0]
        assert row["parsed"]["boxes"][0] == pytest.approx(truth, abs=3), "boxes are in original pixels"
        assert row["image_size"] == list(sample["images"][0].size)
    assert len(examples) == 4 and examples[0]["truth"] == [tuple(float(v) for v in samples[0]["target"]["boxes"][0])]


def test_junk_and_truncated_output_are_counted_failures() -> None:
    data = DataSection()
    samples = [make_sample("synthetic-detection", i, data, "qwen2-vl-grid") for i in range(4)]
    gold = _answers(samples)
    outputs = [gold[0], "I cannot see a table.", gold[2][: len(gold[2]) // 2], ""]
    rows, metrics, _ = score("detection", "qwen2-vl-grid", None, data, samples, ["p"] * 4, outputs)
    assert metrics["parse_failure_rate"] == 0.75
    assert metrics["accuracy_50"] == 0.25 and metrics["precision"] == 1.0 and metrics["recall"] == 0.25
    assert [row["parsed"]["ok"] for row in rows] == [True, False, False, False]
    assert rows[2]["parsed"]["reason"] and rows[3]["parsed"]["reason"] == "empty output"


def test_truth_parsed_from_the_answer_when_the_target_has_no_boxes() -> None:
    data = DataSection()
    sample = make_sample("synthetic-detection", 0, data, "plain")
    truth = sample["target"]["boxes"][0]
    sample["target"] = {"answer": sample["messages"][-1]["content"][0]["text"]}  # as jsonl/plugin data has it
    rows, metrics, _ = score("detection", "plain", None, data, [sample], ["p"], [sample["target"]["answer"]])
    assert rows[0]["target"]["boxes"] == [[float(v) for v in truth]]
    assert metrics["accuracy_50"] == 1.0
    sample["target"] = {"answer": "[1, 2, 3"}
    with pytest.raises(UsageError, match="cannot be read as plain"):
        score("detection", "plain", None, data, [sample], ["p"], ["[1, 2, 3, 4]"])
    sample["target"] = {"answer": "There is no table."}  # a negative sample: no true box
    _, metrics, _ = score("detection", "plain", None, data, [sample], ["p"], ["[]"])
    assert metrics["true_boxes"] == 0 and metrics["map_50"] is None


def test_vqa_scoring() -> None:
    data = DataSection()
    samples = [make_sample("synthetic-vqa", i, data, "plain") for i in range(3)]
    gold = _answers(samples)
    rows, metrics, examples = score(
        "vqa", "plain", None, data, samples, ["p"] * 3, [f"The {gold[0]}.", gold[1] + " x", "nonsense"]
    )
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert rows[0]["scores"] == {"exact_match": True, "relaxed_match": True}
    assert examples[0]["question"] and examples[0]["answer"] == gold[0]
    samples[0]["target"] = {"boxes": [[1, 2, 3, 4]]}
    with pytest.raises(UsageError, match="no answer"):
        score("vqa", "plain", None, data, samples, ["p"] * 3, gold)


# --- tables and the report -------------------------------------------------------------------------------


def _result(name: str, run_dir: Path, **metrics: float | None) -> benchmark.BenchmarkResult:
    recipe = load_recipe(SMOKE, environ={})
    values = {
        "mean_iou": 0.5,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
        "accuracy_50": 0.5,
        "map_50": 0.5,
        "map_50_95": 0.2,
        "parse_failure_rate": 0.1,
        "samples": 10,
        **metrics,
    }
    target = benchmark.Target(name, run_dir, recipe, "final", run_dir / "final")
    return benchmark.BenchmarkResult(target, {"split": "test", "model": recipe.model.name, "metrics": values})


def test_table_marks_the_best_of_each_column(tmp_path: Path) -> None:
    a = _result("runs/a", tmp_path, f1=0.9, parse_failure_rate=0.3)
    b = _result("runs/b", tmp_path, f1=0.4, parse_failure_rate=0.0, accuracy_50=None)
    best = report.best_values([a, b], report.columns([a, b]))
    assert best == {"f1": 0.9, "parse_failure_rate": 0.0}, "ties and lone values have no best; fail: lowest"
    markdown = report.markdown_table([a, b])
    assert "| runs/a | 10 | 0.500 | 0.500 | 0.500 | **0.900** | 0.500 |" in markdown
    assert "| runs/b | 10 | 0.500 | 0.500 | 0.500 | 0.400 | – |" in markdown and "**0.000**" in markdown
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(report.table([a, b]))
    text = console.export_text()
    assert "0.900*" in text and "0.000*" in text and "0.400*" not in text and "10 samples" in text
    assert report.best_values([a], report.columns([a])) == {}, "a single run has nothing to compare"


def test_report_draws_loss_curves_and_boxes(tmp_path: Path) -> None:
    from PIL import Image

    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    history = [{"loss": 3.0 - 0.1 * s, "step": s} for s in range(1, 11)] + [{"eval_loss": 2.5, "step": 10}]
    (run / "summary.json").write_text(json.dumps({"log_history": history}))
    result = _result("runs/a", run)
    image = Image.new("RGB", (200, 250), "white")
    result.examples = [{"id": "s1", "image": image, "pred": [(10, 10, 60, 60)], "truth": [(20, 20, 80, 90)]}]
    other = _result("runs/b (base model)", tmp_path / "nowhere", f1=0.9)
    path = report.write_report([result, other], tmp_path / "report")
    text = path.read_text()
    assert "![training loss](1-runs_a-loss.png)" in text and "![s1](1-runs_a-boxes-1.png)" in text
    assert "| runs/b (base model) |" in text
    boxes = Image.open(tmp_path / "report" / "1-runs_a-boxes-1.png")
    assert boxes.size == (400, 500), "small images are enlarged"
    assert boxes.getpixel((40, 60)) == report.TRUE_COLOUR
    assert boxes.getpixel((20, 40)) == report.PRED_COLOUR
    chart = Image.open(tmp_path / "report" / "1-runs_a-loss.png")
    assert chart.size == (640, 360)
    assert chart.info.get("Software", "").startswith("Matplotlib"), "drawn by matplotlib, not by hand"
    colours = {pixel[:3] for pixel in chart.convert("RGB").getdata()}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours, "the train (blue) and eval (orange) lines"


def test_loss_chart_needs_no_display_and_imports_matplotlib_only_when_drawing(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from vlmtune_cli.eval import report\n"
        "assert 'matplotlib' not in sys.modules\n"
        f"report.draw_loss_curve([(1.0, 2.0, 'train'), (2.0, 1.5, 'train')], Path({str(tmp_path / 'c.png')!r}))\n"
        "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no pyplot')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"} | {"MPLBACKEND": "qtagg"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "no pyplot" and (tmp_path / "c.png").is_file()


def test_each_comparison_keeps_its_own_report_folder(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    a, b = _result("runs/a", tmp_path, f1=0.9), _result("runs/b", tmp_path, f1=0.4)
    # A folder written by an older vlmtune is kept, not overwritten.
    (runs / "benchmark-report").mkdir(parents=True)
    (runs / "benchmark-report" / "report.md").write_text("old comparison")
    first = report.write_report([a, b], report.new_report_dir(runs, [a, b]))
    report.link_latest(runs, first.parent)
    second = report.write_report([b, a], report.new_report_dir(runs, [b, a]))
    link = report.link_latest(runs, second.parent)
    assert first.parent != second.parent and first.parent.parent == runs / "benchmark-reports"
    assert first.parent.name.endswith("-runs_a_vs_runs_b") and "| runs/a |" in first.read_text()
    assert link.is_symlink() and link.resolve() == second.parent.resolve()
    assert (link / "report.md").read_text() == second.read_text()
    kept = [p for p in (runs / "benchmark-reports").iterdir() if p.name.startswith("before-")]
    assert len(kept) == 1 and (kept[0] / "report.md").read_text() == "old comparison"


def test_a_limited_benchmark_names_its_own_files(tmp_path: Path) -> None:
    target = benchmark.run_target(_fake_run(tmp_path))
    assert (target.metrics_file.name, target.predictions_file.name) == ("metrics.json", "predictions.jsonl")
    limited = dataclasses.replace(target, limit=2)
    assert (limited.metrics_file.name, limited.predictions_file.name) == (
        "metrics-limit-2.json",
        "predictions-limit-2.jsonl",
    )


# --- choosing what to benchmark, bad input (no model needed) --------------------------------------------


def _fake_run(
    root: Path,
    name: str = "smoke",
    *,
    final: bool = True,
    checkpoints: tuple[str, ...] = (),
    incomplete: tuple[str, ...] = (),
) -> Path:
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "recipe.toml").write_text(dump_recipe(load_recipe(SMOKE, environ={})))
    if final:
        (run / "final").mkdir()
        (run / "final" / "COMPLETE").write_text("{}")
    for checkpoint in (*checkpoints, *incomplete):
        (run / "checkpoints" / checkpoint).mkdir(parents=True)
    for checkpoint in checkpoints:
        (run / "checkpoints" / checkpoint / "COMPLETE").write_text("{}")
    return run


def test_unfinished_run_names_its_checkpoints(workspace: Path) -> None:
    _fake_run(workspace, final=False, checkpoints=("checkpoint-2", "checkpoint-10"), incomplete=("checkpoint-12",))
    result = runner.invoke(app, ["benchmark", "runs/smoke"])
    assert result.exit_code == 2
    assert "no finished final/" in result.stderr
    assert "complete checkpoints: checkpoint-2, checkpoint-10; incomplete: checkpoint-12" in result.stderr
    assert "--checkpoint checkpoint-10" in result.stderr
    result = runner.invoke(app, ["benchmark", "runs/smoke", "--checkpoint", "12"])
    assert result.exit_code == 2 and "checkpoint-12 is incomplete" in result.stderr
    result = runner.invoke(app, ["benchmark"])
    assert result.exit_code == 2 and "unfinished runs: smoke" in result.stderr
    assert "Traceback" not in result.output


def test_bad_arguments_are_messages(workspace: Path) -> None:
    _fake_run(workspace, "x")
    for argv, message in (
        (["benchmark", "nowhere"], "no such run directory"),
        (["benchmark", "runs"], "not a run directory"),
        (["benchmark", "--limit", "0"], "--limit"),
        (["benchmark", "--batch-size", "0"], "batch"),
        (["benchmark", "runs/x", "--checkpoint", "best"], "expected final, checkpoint-N"),
        (["benchmark", "runs/x", "--recipe", str(SMOKE)], "not both"),
        (["benchmark", "--base"], "no recipe given"),
        (["benchmark", "runs/x", "--split", "validation"], "split 'validation' is not one of"),
    ):
        result = runner.invoke(app, argv)
        assert result.exit_code == 2, (argv, result.output)
        assert message in result.output, (argv, result.output)
        assert "Traceback" not in result.output
    shutil.rmtree(workspace / "runs")
    result = runner.invoke(app, ["benchmark"])
    assert result.exit_code == 2 and "no runs in" in result.stderr


def test_help_and_bad_runs_import_no_ml_library(tmp_path: Path) -> None:
    probe = (
        "import sys\nfrom vlmtune_cli.cli import main\n"
        "for argv in (['benchmark', '--help'], ['benchmark', 'nowhere'], ['benchmark']):\n"
        "    sys.argv = ['vlmtune', *argv]\n"
        "    try:\n        main()\n    except SystemExit:\n        pass\n"
        "print('loaded:', *(m for m in ('torch', 'transformers', 'peft') if m in sys.modules), "
        "file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert "no runs in" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "loaded:"


def test_latest_run_is_the_last_to_finish(workspace: Path) -> None:
    older, newer = _fake_run(workspace, "older"), _fake_run(workspace, "newer")
    _fake_run(workspace, "unfinished", final=False)
    os.utime(older / "final" / "COMPLETE", (2_000_000_000, 2_000_000_000))
    os.utime(newer / "final" / "COMPLETE", (1_000_000_000, 1_000_000_000))
    assert benchmark.latest_run(workspace / "runs") == older


def test_weights_of_another_family_are_refused(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    qwen = next(f for f in FAMILIES if f.name == "qwen2-vl")
    run = _fake_run(tmp_path)
    target = benchmark.run_target(run)
    (run / "final" / "config.json").write_text(json.dumps({"model_type": "mllama"}))
    with pytest.raises(UsageError, match="holds a 'mllama' model"):
        benchmark.check_family(target, qwen)
    (run / "final" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    benchmark.check_family(target, qwen)
    (run / "final" / "adapter_config.json").write_text("{}")
    weight = np.zeros((2, 2), dtype=np.float32)
    save_file(
        {"base_model.model.model.language_model.layers.0.q_proj.lora_A.weight": weight},
        str(run / "final" / "adapter_model.safetensors"),
    )
    benchmark.check_family(target, qwen)
    save_file(
        {"base_model.model.model.vision_model.layers.0.q_proj.lora_A.weight": weight},
        str(run / "final" / "adapter_model.safetensors"),
    )
    with pytest.raises(UsageError, match="another model family"):
        benchmark.check_family(target, qwen)


def test_result_files_are_named_by_what_was_evaluated(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, checkpoints=("checkpoint-4",))
    assert benchmark.run_target(run).metrics_file == run / "metrics.json"
    target = benchmark.run_target(run, "4")
    assert target.predictions_file == run / "predictions-checkpoint-4.jsonl" and target.name.endswith("@checkpoint-4")
    base = benchmark.base_target(SMOKE, tmp_path / "runs")
    assert base.metrics_file == tmp_path / "runs" / "smoke" / "metrics-base.json" and base.weights is None


# --- end to end on a trained smoke run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """A smoke run trained once for this module; tests copy it into their own workspace."""
    home = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("VLMTUNE_"):
                patch.delenv(name)
        for name, value in (
            ("HF_HUB_OFFLINE", "1"),
            ("HF_DATASETS_OFFLINE", "1"),
            ("TOKENIZERS_PARALLELISM", "false"),
            ("VLMTUNE_CACHE_DIR", str(cache_dir)),
            ("VLMTUNE_RUNS_DIR", str(home / "runs")),
        ):
            patch.setenv(name, value)
        patch.chdir(home)
        args = ["train", str(SMOKE)] + [arg for item in SMALL_RUN for arg in ("--set", item)]
        result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return home / "runs" / "smoke"


@pytest.fixture
def run(workspace: Path, trained_run: Path) -> Path:
    copy = workspace / "runs" / "smoke"
    shutil.copytree(trained_run, copy)
    return copy


@pytest.mark.slow
def test_benchmark_of_the_latest_run_writes_predictions_and_metrics(run: Path) -> None:
    result = runner.invoke(app, ["benchmark"])
    assert result.exit_code == 0, result.output
    assert f"most recent run: {Path('runs') / 'smoke'}" in result.stderr.replace(str(run.parent.parent) + "/", "")
    assert "runs/smoke" in result.stdout and "mAP" in result.stdout
    record = json.loads((run / "metrics.json").read_text())
    assert (record["task"], record["split"], record["samples"], record["checkpoint"]) == (
        "detection",
        "test",
        3,
        "final",
    )
    assert set(record["metrics"]) >= {
        "mean_iou",
        "precision",
        "recall",
        "f1",
        "accuracy_50",
        "map_50",
        "map_50_95",
        "parse_failure_rate",
    }
    assert 0.0 <= record["metrics"]["parse_failure_rate"] <= 1.0 and record["samples_per_second"] > 0
    text = (run / "predictions.jsonl").read_text()
    assert hashlib.sha256(text.encode()).hexdigest() == record["predictions_sha256"]
    rows = [json.loads(line) for line in text.splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert {"id", "prompt", "output", "parsed", "target", "scores", "image_size"} <= row.keys()
        assert row["prompt"].endswith("<|im_start|>assistant\n"), "the prompt stops where the answer starts"
        assert "<|box_start|>" not in row["prompt"]
        assert len(row["target"]["boxes"]) == 1
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_generated_gold_answers_score_perfectly_end_to_end(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def gold(model, processor, samples, **kwargs):
        return ["p"] * len(samples), _answers(samples)

    monkeypatch.setattr(benchmark, "generate", gold)
    result = runner.invoke(app, ["benchmark", "runs/smoke", "--split", "train", "--limit", "5", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["runs"][0]["metrics"]
    assert metrics["samples"] == 5
    for key in ("mean_iou", "precision", "recall", "f1", "accuracy_50", "map_50", "map_50_95"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["parse_failure_rate"] == 0.0


@pytest.mark.slow
def test_batched_generation_matches_one_at_a_time(run: Path, cache_dir: Path) -> None:
    import torch

    target = benchmark.run_target(run)
    processor, family = benchmark.load_processor_and_family(target, cache_dir)
    samples = benchmark.load_samples(target.recipe, "train", family, processor, limit=5)
    model = benchmark.load_model(target, cache_dir)
    _, one = benchmark.generate(model, processor, samples, batch_size=1, max_new_tokens=6)
    prompts, batched = benchmark.generate(model, processor, samples, batch_size=5, max_new_tokens=6)
    assert len({len(p) for p in prompts}) > 1, "prompts of different lengths, so the batch is padded"
    assert processor.tokenizer.padding_side == "left"
    # Left padding: the next-token logits of each padded row equal those of the row alone.
    inputs = processor(text=prompts, images=[s["images"][0] for s in samples], padding=True, return_tensors="pt")
    assert (inputs["attention_mask"][:, 0] == 0).any()
    with torch.inference_mode():
        together = model(**inputs).logits[:, -1]
        for row, (prompt, sample) in enumerate(zip(prompts, samples, strict=True)):
            alone = model(**processor(text=[prompt], images=sample["images"], return_tensors="pt")).logits[0, -1]
            torch.testing.assert_close(together[row], alone, atol=1e-4, rtol=1e-4)
    assert batched == one


@pytest.mark.slow
def test_two_runs_and_a_baseline_give_one_table_and_a_report(run: Path) -> None:
    shutil.copytree(run, run.parent / "other")
    result = runner.invoke(
        app,
        [
            "benchmark",
            "runs/smoke",
            "runs/other",
            "--recipe",
            str(SMOKE),
            "--base",
            "--checkpoint",
            "checkpoint-2",
            "--limit",
            "2",
            "--max-new-tokens",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "smoke (base" in result.stdout and "runs/smoke@ch" in result.stdout and "runs/other@ch" in result.stdout
    assert (run / "metrics-base-limit-2.json").is_file() and (run / "metrics-checkpoint-2-limit-2.json").is_file()
    assert (run.parent / "other" / "predictions-checkpoint-2-limit-2.jsonl").is_file()
    assert not (run / "metrics.json").exists(), "a checkpoint's results never pass for the final weights'"
    report_dir = run.parent / "benchmark-report"
    assert report_dir.is_symlink() and report_dir.resolve().parent == run.parent / "benchmark-reports"
    text = (report_dir / "report.md").read_text()
    assert text.count("| smoke (base model) |") == 1 and "| runs/other@checkpoint-2 |" in text
    assert "![training loss](2-runs_smoke_checkpoint-2-loss.png)" in text
    assert len(list(report_dir.glob("*-boxes-*.png"))) == 6 and len(list(report_dir.glob("*-loss.png"))) == 2
    shown = result.stdout.replace(str(run.parent.parent) + "/", "")
    assert f"report: {report_dir.resolve().relative_to(run.parent.parent) / 'report.md'}" in shown
    assert f"(the newest is also {Path('runs') / 'benchmark-report'})" in shown


@pytest.mark.slow
def test_a_limited_benchmark_leaves_the_full_results_alone(run: Path) -> None:
    full = runner.invoke(app, ["benchmark", "runs/smoke", "--max-new-tokens", "4"])
    assert full.exit_code == 0, full.output
    before = {name: (run / name).read_bytes() for name in ("metrics.json", "predictions.jsonl")}
    quick = runner.invoke(app, ["benchmark", "runs/smoke", "--limit", "2", "--max-new-tokens", "4"])
    assert quick.exit_code == 0, quick.output
    assert {name: (run / name).read_bytes() for name in before} == before
    record = json.loads((run / "metrics-limit-2.json").read_text())
    assert (record["samples"], record["limit"], record["predictions"]) == (2, 2, "predictions-limit-2.jsonl")
    assert len((run / "predictions-limit-2.jsonl").read_text().splitlines()) == 2
    assert "wrote " in quick.stderr and "metrics-limit-2.json" in quick.stderr


@pytest.mark.slow
def test_interrupted_benchmark_leaves_no_metrics(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark, "generate", interrupted)
    result = runner.invoke(app, ["benchmark", "runs/smoke"])
    assert result.exit_code != 0
    assert not (run / "metrics.json").exists() and not (run / "predictions.jsonl").exists()
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_bad_data_is_a_message_before_the_weights_load(run: Path, workspace: Path) -> None:
    recipe = (run / "recipe.toml").read_text()
    (run / "recipe.toml").write_text(recipe.replace("split_ratio = 0.8", "split_ratio = 1.0"))
    result = runner.invoke(app, ["benchmark", "runs/smoke"])
    assert result.exit_code == 2 and "split 'test' of builtin:synthetic-detection is empty" in result.stderr
    rows = workspace / "data.jsonl"
    row = {
        "messages": [
            {"role": "user", "content": "Detect the table."},
            {"role": "assistant", "content": "<|box_start|>(1,1),(9,9)<|box_end|>"},
        ],
        "images": ["gone.png"],
    }
    rows.write_text("\n".join(json.dumps({**row, "id": f"s{i}"}) for i in range(4)) + "\n")
    (run / "recipe.toml").write_text(recipe.replace('source = "builtin:synthetic-detection"', f'source = "{rows}"'))
    result = runner.invoke(app, ["benchmark", "runs/smoke"])
    assert result.exit_code == 2 and "gone.png does not exist" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_vqa_baseline_end_to_end(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = workspace / "vqa.toml"
    recipe.write_text(
        f'extends = "{SMOKE}"\nvariant = "vqa"\n[data]\nsource = "builtin:synthetic-vqa"\n'
        'num_samples = 10\n[benchmark]\ntask = "vqa"\n'
    )
    result = runner.invoke(app, ["benchmark", "--recipe", str(recipe), "--base", "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "exact" in result.stdout and "vqa (base model)" in result.stdout
    record = json.loads((workspace / "runs" / "vqa" / "metrics-base.json").read_text())
    assert record["task"] == "vqa" and set(record["metrics"]) == {"exact_match", "relaxed_match", "samples"}
    rows = [json.loads(line) for line in (workspace / "runs" / "vqa" / "predictions-base.jsonl").open()]
    assert len(rows) == record["samples"] == 2 and all(row["target"]["answer"] for row in rows)

    monkeypatch.setattr(
        benchmark, "generate", lambda model, processor, samples, **kw: (["p"] * len(samples), _answers(samples))
    )
    result = runner.invoke(app, ["benchmark", "--recipe", str(recipe), "--base", "--json"])
    assert json.loads(result.stdout)["runs"][0]["metrics"]["exact_match"] == 1.0
