"""Hostile command lines: every override either runs or stops with one line and exit code 2, never a traceback.

Hypothesis throws random and malformed overrides at `ssl-train`: known keys with values of the wrong type,
out of range, huge, negative, NaN, empty or unicode; unknown keys; unknown group options; broken override
syntax; paths that do not exist; unknown flags. Most examples run in-process (`ssl_cli.cli.main()` with
`sys.argv` patched), each in its own run directory, on a few steps of tiny synthetic data so that the
valid ones finish in a fraction of a second; a few go through the installed command in a child process.

Sizes that would make a valid run long (trainer.max_steps, batch sizes, ...) are only fuzzed with small
or invalid values: a valid huge value is a long run, not a bug.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from conftest import compose, run_cli, ssl_train

# A few steps on tiny data: a valid example runs in well under a second.
BASE = ["debug=smoke", "trainer.max_steps=2", "trainer.eval_every=2", "trainer.checkpoint_every=2",
        "trainer.log_every=1", "trainer.batch_size=4", "trainer.eval_batch_size=64", "trainer.device=cpu",
        "trainer.progress_bar=false", "trainer.num_threads=1"]
TINY_DATA = ["dataset.num_train=32", "dataset.num_test=8", "dataset.image_size=8", "dataset.num_labels=8",
             "dataset.num_validation=4"]
TINY_METHOD = {"fixmatch": ["method.unlabeled_ratio=1"], "pseudolabel": ["method.unlabeled_ratio=1"],
               "selfsup": ["method.pretrain_steps=1", "method.pretrain_batch_size=4"]}


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


KNOWN_KEYS = sorted(_leaves(OmegaConf.to_container(compose(["debug=smoke"]), resolve=False)))
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
GROUP_OPTIONS = {g: sorted(p.stem for p in (CONFIGS / g).glob("*.yaml"))
                 for g in ("dataset", "backbone", "augmentation", "method", "optim", "scheduler", "trainer",
                           "experiment", "debug")}
# Group options that are valid but slow on the CPU even for two steps: left to tests/test_config.py.
SLOW_OPTIONS = {"backbone=wrn28_8", "backbone=resnet18", "backbone=wrn28_2", "experiment=fixmatch_cifar10_4000"}

# --------------------------------------------------------------------------- values

HUGE = ["2147483648", str(2**63), str(2**64), str(-2**63 - 1), str(10**30), "-" + str(10**30),
        "1" + "0" * 400, "1e30", "-1e30", "1e308", "1e309", "-1e309"]
SPECIAL = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "0", "-0", "-0.0", "0.0", "1e-320", "-1", "0.5", "1.5",
           "-2.5", "true", "false", "True", "FALSE", "null", "Null", "none", "None", "yes", "no", "on", "off",
           "", "''", '""', "' '", "[]", "[1]", "[1,2]", "[a,b]", "[[1]]", "{}", "{a:1}", "{a:{b:1}}", "???",
           "${seed}", "${nope}", "${trainer}", "${oc.env:NOPE}", "${oc.env:HOME}", "${oc.decode:'[1,2]'}",
           "'\\u00fc'", "'ü'", "'日本語'", "'😀'", "'\\x00'", "'a b c'", "'--'", "'='", "abc", "ABC", "a.b", "a/b",
           "/", ".", "..", "~", "-", "--x", "0x10", "0o17", "0b11", "1_000", "1.", ".5", "1e", "e1", "+1", "+-1",
           "'" + "x" * 300 + "'", "int(3)", "float('nan')", "choice(1,2)", "range(3)", "interval(0,1)"]
SMALL_INTS = st.integers(min_value=-10, max_value=10).map(str)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64).map(repr)
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
VALUES = st.one_of(st.sampled_from(HUGE), st.sampled_from(SPECIAL), SMALL_INTS, FLOATS, TEXT)

NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=10)
PUNCT = st.text(alphabet="=~+[]{}()'\",:$@.\\/ -_*?!#%^&|<>`;abc01üé日😀\t", min_size=1, max_size=16)


# Keys whose valid large values make a long run (or a huge model): fuzzed with small or invalid values only.
RUN_LENGTH_KEYS = {"trainer.max_steps", "trainer.batch_size", "trainer.grad_accumulation", "method.unlabeled_ratio",
                   "method.pretrain_steps", "method.pretrain_batch_size", "method.projection_dim",
                   "method.hidden_dim", "dataset.num_train", "dataset.num_test", "dataset.image_size",
                   "dataset.num_classes", "trainer.num_threads", "trainer.compile"}


def long_run(value: str) -> bool:
    """True for a value Hydra reads as an integer that is valid but large (a long run, not a bug)."""
    if value.strip().lower() == "true":  # trainer.compile=true: minutes of compiling on the CPU
        return True
    try:
        n = int(value.strip().replace("_", ""))
    except ValueError:
        return False
    return 10 < n < 2**63


@st.composite
def known_key(draw):
    """A key of the composed config with a hostile value."""
    key = draw(st.sampled_from(KNOWN_KEYS))
    value = draw(VALUES.filter(lambda v: not long_run(v)) if key in RUN_LENGTH_KEYS else VALUES)
    return [f"{key}={value}"]


@st.composite
def several_known_keys(draw):
    return [o for _ in range(draw(st.integers(2, 4))) for o in draw(known_key())]


@st.composite
def unknown_key(draw):
    prefix = draw(st.sampled_from(["", "+", "++", "~"]))
    parent = draw(st.sampled_from(["", "trainer.", "dataset.", "method.", "optim.", "scheduler.", "backbone.",
                                   "augmentation.", "seed.", "hydra.", "nope."]))
    key = draw(NAME)
    return [f"{prefix}{parent}{key}" + ("" if prefix == "~" and draw(st.booleans()) else f"={draw(VALUES)}")]


@st.composite
def deleted_key(draw):
    """~key for keys the program needs, with and without their value."""
    key = draw(st.sampled_from(KNOWN_KEYS + list(GROUP_OPTIONS) + ["seed", "resume"]))
    return [f"~{key}"]


@st.composite
def group_option(draw):
    group = draw(st.sampled_from(sorted(GROUP_OPTIONS)))
    option = draw(st.one_of(st.sampled_from(GROUP_OPTIONS[group] + ["null", "''", "nope", ""]), NAME, TEXT))
    prefix = draw(st.sampled_from(["", "", "+", "~"]))
    return [f"{prefix}{group}={option}"]


@st.composite
def malformed(draw):
    """Broken override syntax: random punctuation, unbalanced brackets and quotes, stray operators."""
    return [draw(st.one_of(
        PUNCT,
        st.sampled_from(["=x", "=", "==", "a==b", "++", "+", "~", "~=", "a=[1", "a=]", "a={", "a=}", "a='x",
                         'a="x', "a=(", "trainer.max_steps=[1", "seed='1", "seed=\"", "seed=${", "seed=${seed",
                         "seed=1=2", "seed==1", "seed=1,2", "seed=a b", ".seed=1", "seed.=1", "trainer..max_steps=1",
                         "trainer.max_steps.x=1", "@seed=1", "seed@x=1", "seed=\\", "method=[fixmatch]",
                         "method={a:1}", "method=${seed}", "dataset=../../etc", "dataset=/abs"]),
        st.tuples(NAME, PUNCT).map("=".join),
    ))]


@st.composite
def flag(draw):
    return [draw(st.one_of(st.sampled_from(["--nope", "-x", "--cfg=nope", "-c", "--package", "--info=nope", "---",
                                            "-", "--resolve", "-p", "--run"]),
                           st.builds(lambda n: "--" + n, NAME), st.builds(lambda n: "-" + n, NAME)))]


@st.composite
def bad_path(draw):
    """Data sets, checkpoints and split files at paths that do not exist or are not what they should be."""
    where = draw(st.sampled_from(["/no/such/folder", "nope", "", "''", "/", "/dev/null", "/etc/hostname", ".",
                                  "'ü/日本'", "${oc.env:HOME}/nope"]))
    kind = draw(st.sampled_from(["imagefolder", "cifar10", "cifar100", "mnist", "svhn", "stl10", "resume",
                                 "labeled_indices", "cache_dir"]))
    if kind == "resume":
        return [f"resume={where}"]
    if kind == "labeled_indices":
        return [f"dataset.labeled_indices={where}"]
    if kind == "cache_dir":
        return ["dataset=imagefolder", "dataset.root=/no/such", f"dataset.cache_dir={where}"]
    return [f"dataset={kind}", f"dataset.root={where}"]


STRATEGIES = {"known_key": known_key(), "several_known_keys": several_known_keys(), "unknown_key": unknown_key(),
              "deleted_key": deleted_key(), "group_option": group_option(), "malformed": malformed(),
              "flag": flag(), "bad_path": bad_path()}
ANY_OVERRIDES = st.one_of(*STRATEGIES.values())


# --------------------------------------------------------------------------- running ssl-train


def command_line(overrides: List[str]) -> List[str]:
    """BASE, tiny-data options where the example keeps the synthetic data set, then the example."""
    groups = {o.split("=", 1)[0].lstrip("+~"): o.split("=", 1)[-1] for o in overrides if "=" in o}
    extra = [] if "dataset" in groups or "experiment" in groups else list(TINY_DATA)
    extra += TINY_METHOD.get(groups.get("method", "fixmatch"), [])
    return BASE + extra + list(overrides)


def is_slow(overrides: List[str]) -> bool:
    return any(o.lstrip("+") in SLOW_OPTIONS for o in overrides)


def run_in_process(args: List[str], workdir: Path) -> Tuple[int, str]:
    """`ssl-train <args>` in this process, in its own run directory: (exit code, stderr)."""
    code, _, stderr = run_cli([*args, f"hydra.run.dir={workdir / 'run'}"], workdir)
    return code, stderr


def assert_runs_or_one_line(code: int, stderr: str, args: List[str]) -> None:
    shown = f"ssl-train {' '.join(args)}\nexit {code}\nstderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, shown
    if code == 0:
        return
    assert code == 2, shown
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ssl-train: error: "), shown
    assert len(lines[0]) > len("ssl-train: error: ") + 5, shown  # says what was wrong


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    old = os.environ.get("SSL_CLI_CACHE")
    os.environ["SSL_CLI_CACHE"] = str(root / "cache")
    yield root
    if old is None:
        os.environ.pop("SSL_CLI_CACHE", None)
    else:
        os.environ["SSL_CLI_CACHE"] = old


# Examples per strategy: 530 in all. Most stop at the command-line check in about 0.1 s; an example that
# runs (or fails while loading data) takes about 0.5 s, so the strategies that often run get fewer.
EXAMPLES = {"known_key": 130, "several_known_keys": 40, "unknown_key": 50, "deleted_key": 20, "group_option": 30,
            "malformed": 160, "flag": 80, "bad_path": 20}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_hostile_overrides_run_or_fail_in_one_line(strategy, workdirs):
    @settings(max_examples=EXAMPLES[strategy], deadline=None, database=None, derandomize=False,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
    @given(overrides=STRATEGIES[strategy])
    def check(overrides):
        if is_slow(overrides):
            return
        args = command_line(overrides)
        code, stderr = run_in_process(args, Path(tempfile.mkdtemp(dir=workdirs)))
        assert_runs_or_one_line(code, stderr, args)

    check()


# Overrides that ended in a traceback (or in more than one line) before the fuzzer found them.
REGRESSIONS = [
    ["trainer.num_threads=-1"],              # RuntimeError from torch.set_num_threads
    ["trainer.num_threads=abc"],             # ValueError from int('abc')
    ["optim.lr=abc"],                        # TypeError: '>' between str and int in build_optimizer
    ["optim.momentum=-1"],                   # ValueError from torch.optim.SGD
    ["~optim.lr"],                           # TypeError: build_optimizer() missing 'lr'
    ["+optim.foo=1"],                        # TypeError: unexpected keyword argument 'foo'
    ["scheduler.warmup_steps=abc"],          # TypeError: '<' between str and int
    ["augmentation.translate=nan"],          # ValueError: cannot convert float NaN to integer
    ["augmentation.apply_prob=${nope}"],     # InterpolationKeyError from OmegaConf.missing_keys
    ["dataset.num_train=abc"],               # TypeError in load_synthetic
    ["dataset.channels=10"],                 # RuntimeError: size of tensor a (10) must match ... (3)
    ["dataset.channels=0"],                  # a torch UserWarning on stderr before the error line
    ["dataset.name=[1,2]"],                  # TypeError: unhashable type: 'ListConfig'
    ["~seed"],                               # ConfigAttributeError: Key 'seed' is not in struct
    ["~dataset"],                            # ConfigAttributeError: Key 'name' is not in struct
    ["~trainer.nonfinite"],                  # ConfigAttributeError: Key 'nonfinite' is not in struct
    ["seed=99999999999999999999999"],        # ValueError: Overflow when unpacking long long
    ["dataset=imagefolder"],                 # dataset.root=??? reached the loader as the folder '???'
    ["--nope"],                              # argparse's usage text: two lines
    ["--e", "x"],                            # read as --experimental-rerun x: ValueError, file does not exist
    ["--config-dir", "/no/such"],            # Hydra: 'Additional config directory not found', exit 1
    ["--cfg", "job", "-p", "nope"],          # Hydra: "package 'nope' not found in config", exit 1
    ["hydra.run.dir=afile"],                 # FileExistsError from Hydra's mkdir
    ["method=selfsup", "+method.pretrain_optim.lr=abc"],  # a stage's config was never checked: TypeError
]


@pytest.mark.parametrize("overrides", REGRESSIONS, ids=[" ".join(o) for o in REGRESSIONS])
def test_overrides_that_once_gave_a_traceback(overrides, tmp_path):
    (tmp_path / "afile").write_text("not a directory")
    first = next((i for i, o in enumerate(overrides) if "=" in o and not o.startswith("-")), len(overrides))
    flags, rest = overrides[:first], overrides[first:]  # flags (and their values) go first
    run_dir = [] if any(o.startswith("hydra.run.dir=") for o in rest) else [f"hydra.run.dir={tmp_path / 'run'}"]
    args = flags + BASE + rest + run_dir
    code, _, stderr = run_cli(args, tmp_path)
    assert_runs_or_one_line(code, stderr, args)
    assert code == 2
    assert not (tmp_path / "run").exists()  # refused before Hydra created the run directory


# One of each interesting strategy through the installed command, in a child process, as a user runs it.
THROUGH_THE_COMMAND = [["optim.lr=abc"], ["~seed"], ["a==b"], ["+trainer.foo=1"], ["method=nope"], ["--nope"]]


@pytest.mark.parametrize("overrides", THROUGH_THE_COMMAND, ids=[" ".join(o) for o in THROUGH_THE_COMMAND])
def test_hostile_overrides_through_the_installed_command(overrides, tmp_path):
    args = BASE + list(overrides) + [f"hydra.run.dir={tmp_path / 'run'}"]
    result = ssl_train(args, tmp_path, timeout=120)
    assert_runs_or_one_line(result.returncode, result.stderr, args)
    assert result.returncode == 2
    assert not (tmp_path / "run").exists()


def test_known_keys_cover_every_group():
    """The fuzzer knows the keys of every config group (so a new key gets fuzzed as soon as it exists)."""
    groups = {k.split(".")[0] for k in KNOWN_KEYS}
    assert {"dataset", "backbone", "augmentation", "method", "optim", "scheduler", "trainer", "seed"} <= groups
    assert sum(EXAMPLES.values()) >= 500
