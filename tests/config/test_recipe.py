"""Recipes: every shipped file loads, extends/overrides layer in the documented order, and mistakes name
the file, the dotted key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmtune_cli.config.recipe import dump_recipe, load_recipe, parse_value, recipe_diff
from vlmtune_cli.config.schema import Recipe
from vlmtune_cli.errors import RecipeError

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_round_trips(path: Path, tmp_path: Path) -> None:
    recipe = load_recipe(path, environ={})
    again = load_recipe(write(tmp_path / "dumped.toml", dump_recipe(recipe)), environ={})
    assert again == recipe
    assert path.read_text().startswith("#"), "each shipped recipe opens with a comment showing its command"
    assert "vlmtune " in path.read_text().splitlines()[1] + path.read_text().splitlines()[2]


def test_variants_are_data_not_code() -> None:
    v = {n: load_recipe(RECIPES / f"{n}.toml", environ={}) for n in ("v1", "v2", "v3", "v4")}
    assert (v["v1"].tuning.loss_on, v["v2"].tuning.loss_on) == ("all", "assistant")
    assert (v["v1"].tuning.vision, v["v1"].tuning.llm) == ("lora", "lora")
    assert (v["v2"].tuning.vision, v["v2"].tuning.llm) == ("lora", "lora")
    assert (v["v3"].tuning.vision, v["v3"].tuning.projector, v["v3"].tuning.llm) == ("full", "full", "frozen")
    assert (v["v4"].tuning.vision, v["v4"].tuning.projector, v["v4"].tuning.llm) == ("frozen", "frozen", "lora")
    # The user's defaults from seed 001 arrive through `extends`.
    for recipe in v.values():
        t = recipe.training
        assert (t.lr, t.lr_scheduler, t.warmup_steps, t.grad_accum, t.save_total_limit, t.seed) == (
            2e-5,
            "cosine",
            100,
            8,
            3,
            42,
        )
        assert recipe.data.max_length == 2048
    assert len({r.variant for r in v.values()}) == 4


def test_extends_deep_merges_relative_to_the_child(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "parent.toml", 'variant = "p"\n[training]\nlr = 1e-4\nepochs = 5\n[lora]\nr = 4\n')
    child = write(tmp_path / "sub" / "child.toml", 'extends = "../parent.toml"\n[training]\nepochs = 2\n')
    recipe = load_recipe(child, environ={})
    assert (recipe.variant, recipe.training.lr, recipe.training.epochs, recipe.lora.r) == ("p", 1e-4, 2, 4)


def test_extends_cycle_and_missing_parent_are_errors(tmp_path: Path) -> None:
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.toml", environ={})
    write(tmp_path / "c.toml", 'extends = "nope.toml"\n')
    with pytest.raises(RecipeError, match=r"nope\.toml: recipe file not found \(named by `extends` in"):
        load_recipe(tmp_path / "c.toml", environ={})


def test_precedence_parent_child_env_set(tmp_path: Path) -> None:
    write(tmp_path / "parent.toml", "[training]\nlr = 1.0\nepochs = 1\nseed = 1\nbatch_size = 1\n")
    child = write(
        tmp_path / "child.toml", 'extends = "parent.toml"\n[training]\nepochs = 2\nseed = 2\nbatch_size = 2\n'
    )
    env = {"VLMTUNE_TRAINING__SEED": "3", "VLMTUNE_TRAINING__BATCH_SIZE": "3", "VLMTUNE_RUNS_DIR": "ignored"}
    recipe = load_recipe(child, ["training.batch_size=4"], environ=env)
    t = recipe.training
    assert (t.lr, t.epochs, t.seed, t.batch_size) == (1.0, 2, 3, 4)


def test_set_values_are_toml_with_bare_strings(tmp_path: Path) -> None:
    path = write(tmp_path / "r.toml", "")
    recipe = load_recipe(
        path,
        [
            "training.lr=5e-5",
            "model.name=Qwen/Qwen2-VL-7B-Instruct",
            'training.report_to=["none"]',
            "training.gradient_checkpointing=true",
            "data.max_samples=100",
            "data.options.image_size=96",
        ],
        environ={},
    )
    assert recipe.training.lr == 5e-5
    assert recipe.model.name == "Qwen/Qwen2-VL-7B-Instruct"
    assert recipe.training.report_to == ["none"]
    assert recipe.training.gradient_checkpointing is True
    assert recipe.data.max_samples == 100 and recipe.data.options == {"image_size": 96}
    assert parse_value("2") == 2 and parse_value("abc def") == "abc def"


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("[training]\nlrr = 1\n", [], "bad.toml: training.lrr: unknown key; did you mean training.lr?"),
        ("[lora]\nrank = 8\n", [], "bad.toml: lora.rank: unknown key"),
        ("[trainig]\nlr = 1\n", [], "bad.toml: trainig: unknown key; did you mean training?"),
        ("lr = 1\n", [], "bad.toml: lr: unknown key; did you mean training.lr?"),
        ("", ["training.epochs=zero"], "--set training.epochs=zero: training.epochs: Input should be a valid integer"),
        ('[tuning]\nvision = "half"\n', [], "tuning.vision: Input should be 'frozen', 'lora' or 'full'"),
        ('[tuning]\nvision = "frozen"\nprojector = "frozen"\nllm = "frozen"\n', [], "nothing would train"),
        ('[model]\nname = "builtin:tiny-gpt"\n', [], "unknown built-in model 'builtin:tiny-gpt'"),
        (
            '[model]\nquantization = "4bit"\n[tuning]\nvision = "lora"\nprojector = "full"\n',
            [],
            "model.quantization = '4bit' cannot train tuning.projector = 'full'",
        ),
        ("", ["model.quantization=8bit", "tuning.llm=full"], "cannot train tuning.llm = 'full'"),
        (
            '[model]\ndtype = "bfloat16"\n[training]\nprecision = "fp32"\n',
            [],
            'set training.precision = "bf16" (or "auto"), or model.dtype = "float32"',
        ),
        ('variant = "a/b"\n', [], "cannot name a run directory"),
        ('[slurm]\ntime = "4 hours"\n', [], "is not a SLURM time limit"),
        ("[training\n", [], "bad.toml: not valid TOML"),
        ("", ["training.lr"], "--set training.lr: expected KEY=VALUE"),
        ("[training]\nlr = 1.0\n", ["training.lr.x=1"], "training.lr is a value, not a table"),
        (
            "[training.fsdp]\ncpu_offload = true\n",
            [],
            "training.fsdp.cpu_offload is set but training.strategy = 'ddp': FSDP settings apply only to sharded",
        ),
        (
            '[training]\nstrategy = "fsdp"\ngradient_checkpointing = true\n',
            ["training.fsdp.activation_checkpointing=true"],
            "set training.gradient_checkpointing = false",
        ),
        ("", ['training.extra.fsdp="full_shard"'], "training.extra.fsdp: vlmtune sets up distributed training itself"),
        ("", ["training.strategy=fsdp", "model.quantization=4bit"], 'use training.strategy = "ddp" for QLoRA'),
        ("", ["training.strategy=zero"], "training.strategy: Input should be 'ddp' or 'fsdp'"),
        ("[training.fsdp]\nshard = 1\n", [], "bad.toml: training.fsdp.shard: unknown key"),
    ],
)
def test_bad_recipes_name_file_key_and_fix(tmp_path: Path, text: str, overrides: list[str], expected: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, overrides, environ={})
    assert expected in caught.value.message
    assert caught.value.exit_code == 2


def test_error_names_the_parent_file_that_holds_the_typo(tmp_path: Path) -> None:
    write(tmp_path / "parent.toml", "[training]\nwarmup = 3\n")
    child = write(tmp_path / "child.toml", 'extends = "parent.toml"\n')
    expected = r"parent\.toml: training\.warmup: unknown key; did you mean training\.warmup_steps\?"
    with pytest.raises(RecipeError, match=expected):
        load_recipe(child, environ={})


def test_bad_environment_variable_is_named(tmp_path: Path) -> None:
    path = write(tmp_path / "r.toml", "")
    with pytest.raises(RecipeError, match="VLMTUNE_TRAINING__LRR: training.lrr: unknown key"):
        load_recipe(path, environ={"VLMTUNE_TRAINING__LRR": "1"})


def test_every_field_is_documented() -> None:
    def walk(model: type, prefix: str = ""):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                yield from walk(annotation, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", field.description

    undocumented = [key for key, doc in walk(Recipe) if not doc]
    assert undocumented == []


def test_recipe_diff_lists_changed_keys() -> None:
    v2 = load_recipe(RECIPES / "v2.toml", environ={})
    v4 = load_recipe(RECIPES / "v4.toml", environ={})
    diff = recipe_diff(v2, v4)
    assert set(diff) == {"variant", "description", "tuning.vision", "tuning.projector"}
    assert diff["tuning.vision"] == ("lora", "frozen")


def test_recipe_reference_is_up_to_date() -> None:
    from vlmtune_cli.config.reference import render

    current = (RECIPES.parent / "docs" / "recipes.md").read_text()
    assert current == render(), "regenerate it: python -m vlmtune_cli.config.reference > docs/recipes.md"


# --- paths: relative to the file that wrote them ---------------------------------------------------------


def test_paths_are_relative_to_the_file_that_wrote_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "recipes" / "data").mkdir(parents=True)
    (tmp_path / "shared").mkdir()
    (tmp_path / "recipes" / "data" / "rows.jsonl").write_text("")
    (tmp_path / "shared" / "plugin.py").write_text("")
    (tmp_path / "here.jsonl").write_text("")
    write(tmp_path / "shared" / "parent.toml", '[data]\nsource = "plugin.py:get_custom_dataset"\n')
    child = write(tmp_path / "recipes" / "child.toml", 'extends = "../shared/parent.toml"\n')
    own = write(tmp_path / "recipes" / "own.toml", '[data]\nsource = "data/rows.jsonl"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where you run does not matter for a path written in a recipe
    assert load_recipe(own, environ={}).data.source == str(tmp_path / "recipes" / "data" / "rows.jsonl")
    assert load_recipe(child, environ={}).data.source == f"{tmp_path / 'shared' / 'plugin.py'}:get_custom_dataset"
    # --set and the environment are typed where you run: relative to the current directory.
    monkeypatch.chdir(tmp_path)
    assert load_recipe(own, ["data.source=here.jsonl"], environ={}).data.source == str(tmp_path / "here.jsonl")
    assert load_recipe(own, environ={"VLMTUNE_DATA__SOURCE": "here.jsonl"}).data.source == str(tmp_path / "here.jsonl")
    # Hub ids and built-ins are left alone.
    assert load_recipe(own, ["data.source=owner/name"], environ={}).data.source == "owner/name"
    assert (
        load_recipe(own, ["model.name=Qwen/Qwen2-VL-2B-Instruct"], environ={}).model.name == "Qwen/Qwen2-VL-2B-Instruct"
    )


def test_a_path_found_only_where_you_run_still_works_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.jsonl").write_text("")
    (tmp_path / "recipes").mkdir()
    old_style = write(tmp_path / "recipes" / "old.toml", '[data]\nsource = "data/rows.jsonl"\n')
    monkeypatch.chdir(tmp_path)
    assert load_recipe(old_style, environ={}).data.source == str(tmp_path / "data" / "rows.jsonl")
    err = capsys.readouterr().err
    assert "data.source: 'data/rows.jsonl' was found relative to the current directory" in err
    assert "write '../data/rows.jsonl'" in err


def test_a_missing_path_says_where_it_was_looked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlmtune_cli.data.sources import source_kind
    from vlmtune_cli.errors import UsageError

    (tmp_path / "recipes").mkdir()
    recipe = write(tmp_path / "recipes" / "r.toml", '[data]\nsource = "data/gone.jsonl"\n')
    monkeypatch.chdir(tmp_path)
    source = load_recipe(recipe, environ={}).data.source
    assert source == str(tmp_path / "recipes" / "data" / "gone.jsonl")
    with pytest.raises(UsageError) as caught:
        source_kind(source)
    assert caught.value.message == f"data.source: {tmp_path / 'recipes' / 'data' / 'gone.jsonl'} does not exist"
    assert "relative to the recipe file's folder" in (caught.value.hint or "")


def test_recipes_new_suggests_a_data_path_that_resolves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from vlmtune_cli.cli import app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    result = CliRunner().invoke(app, ["recipes", "new", "recipes/mine.toml", "--from", str(RECIPES / "smoke.toml")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "recipes" / "mine.toml").read_text()
    suggested = next(line for line in text.splitlines() if line.startswith("# source = "))
    assert suggested == '# source = "../data/train.jsonl"'
    (tmp_path / "recipes" / "mine.toml").write_text(text + "\n[data]\n" + suggested.removeprefix("# ") + "\n")
    loaded = load_recipe(tmp_path / "recipes" / "mine.toml", environ={})
    assert loaded.data.source == str(tmp_path / "data" / "train.jsonl")


# --- unset: dropping what a parent set ----------------------------------------------------------------------


def test_a_child_recipe_unsets_what_its_parent_set(tmp_path: Path) -> None:
    write(tmp_path / "parent.toml", "[training]\nmax_steps = 5\nlr = 0.5\n[data.options]\ncolour = 'red'\nsize = 3\n")
    child = write(
        tmp_path / "child.toml",
        'extends = "parent.toml"\nunset = ["training.max_steps", "data.options.colour"]\n[training]\nepochs = 2\n',
    )
    recipe = load_recipe(child, environ={})
    assert recipe.training.max_steps is None and recipe.training.lr == 0.5 and recipe.training.epochs == 2
    assert recipe.data.options == {"size": 3}
    # The child may set again what it unset: its own keys come after the unset.
    again = write(tmp_path / "again.toml", 'extends = "parent.toml"\nunset = ["training"]\n[training]\nepochs = 4\n')
    assert load_recipe(again, environ={}).training.model_dump() == {
        **Recipe().training.model_dump(),
        "epochs": 4,
    }


def test_unset_on_the_command_line_drops_any_layer_and_set_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "r.toml", "[training]\nmax_steps = 5\n")
    assert load_recipe(path, environ={}, unset=["training.max_steps"]).training.max_steps is None
    env = {"VLMTUNE_TRAINING__MAX_STEPS": "7"}
    assert load_recipe(path, environ=env, unset=["training.max_steps"]).training.max_steps is None
    assert (
        load_recipe(path, ["training.max_steps=9"], environ=env, unset=["training.max_steps"]).training.max_steps == 9
    )


@pytest.mark.parametrize(
    ("text", "unset", "expected"),
    [
        (
            'unset = ["data.min_pixel"]\n',
            [],
            "bad.toml: unset: data.min_pixel: not a recipe key; did you mean data.min_pixels?",
        ),
        ('unset = "training.max_steps"\n', [], "bad.toml: unset: must be a list of dotted keys"),
        ("", ["training.lrr"], "--unset: training.lrr: not a recipe key; did you mean training.lr?"),
        ("", ["training.lr.x"], "--unset: training.lr.x: not a recipe key"),
    ],
)
def test_unset_of_an_unknown_key_is_named(tmp_path: Path, text: str, unset: list[str], expected: str) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path, environ={}, unset=unset)
    assert expected in caught.value.message


def test_mllama_child_of_a_qwen_recipe_drops_the_pixel_bounds(tmp_path: Path) -> None:
    """smoke.toml sets Qwen's pixel bounds, which Mllama's processor refuses: a child can now drop them."""
    child = write(
        tmp_path / "mllama.toml",
        f'extends = "{RECIPES / "smoke.toml"}"\nunset = ["data.min_pixels", "data.max_pixels"]\n'
        '[model]\nname = "builtin:tiny-mllama"\n',
    )
    recipe = load_recipe(child, environ={})
    assert (recipe.data.min_pixels, recipe.data.max_pixels) == (None, None)
    inherited = load_recipe(RECIPES / "smoke.toml", environ={})
    assert inherited.data.max_pixels == 50176
