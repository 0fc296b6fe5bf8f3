import json
from pathlib import Path

import pytest

from trace_rl.cli.main import main
from trace_rl.store.store import RolloutStore

TINY = [
    "task.n_people=24",
    "task.n_orgs=8",
    "task.n_cities=8",
    "task.n_countries=3",
    "task.n_train=40",
    "task.n_dev=8",
    "task.n_test=8",
    "model.vocab_size=600",
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.head_dim=32",
    "warmstart.max_steps=4",
    "warmstart.eval_every=2",
    "warmstart.eval_questions=8",
    "warmstart.batch_size=4",
    "warmstart.eval_samples=1",
    "agent.max_tokens_per_turn=12",
    "trace.budget=8",
    "trace.pool_size=6",
    "trace.group_size=2",
    "train.iterations=2",
    "train.eval_every=1",
    "train.eval_questions=4",
    "train.eval_samples=2",
]


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _args(*extra):
    return [item for s in [*TINY, *extra] for item in ("--set", s)]


def test_run_builds_the_task_and_model_then_trains_and_logs_metrics(prefect_api, workdir, capsys):
    assert main(["run", *_args("run.name=smoke")]) == 0
    for path in [
        "data/synthetic/train.jsonl",
        "data/synthetic/corpus.jsonl",
        "data/synthetic/bm25/build.json",
        "models/tiny-react/config.json",
        "models/tiny-react/tokenizer.json",
    ]:
        assert (workdir / path).exists(), path
    rows = [json.loads(line) for line in (workdir / "runs/smoke/metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [-1, 0, 1]
    assert all(r["rollout/leaves"] == 8 for r in rows[1:])
    assert all(
        k.split("/")[0] in {"iteration", "rollout", "alloc", "predictor", "policy", "eval", "time"}
        for r in rows
        for k in r
    )
    for r in rows[1:]:  # siblings and later turns reuse their prefix's cached keys/values
        assert 0 < r["rollout/stage1_prefix_cache_hit_rate"] < 1
    assert "dev EM before -> after" in capsys.readouterr().out
    built = (workdir / "models/tiny-react/build.json").stat().st_mtime_ns
    store = RolloutStore(f"sqlite:///{workdir / 'runs/rollouts.db'}")
    run = store.run_id("smoke")
    for it in (0, 1):
        trees = store.load_trees(run, it)
        assert sum(len(t.leaves()) for t in trees) == 8
        assert store.completed_stages(run, it) >= {"allocate_roots", "roll_out_roots", "update_policy", "evaluate"}
    assert [m["iteration"] for m in store.iteration_metrics(run)] == [-1, 0, 1]  # -1: before training
    store.close()

    assert main(["run", *_args("run.name=smoke")]) == 0  # unchanged settings reuse what was built
    assert (workdir / "models/tiny-react/build.json").stat().st_mtime_ns == built


def test_a_bad_setting_stops_the_run_before_anything_is_built(workdir, capsys):
    assert main(["run", "--set", "agent.max_turns=0"]) == 2
    assert "agent.max_turns" in capsys.readouterr().err
    assert not (workdir / "data").exists()


def test_the_help_of_every_command_needs_neither_torch_nor_prefect():
    import subprocess
    import sys

    probe = (
        "import sys\nfrom trace_rl.cli.main import main\n"
        "for argv in (['--help'], ['run', '--help'], ['bench', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print(sorted(m for m in ('torch', 'prefect', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_the_analysis_commands_read_settings_and_the_database_without_torch_or_transformers(tmp_path):
    """`settings`, `runs`, `query`, `sql` and `db status` build the full settings (every registry name
    validated) and read the store, yet import no model code: they answer in a second or two."""
    import subprocess
    import sys

    url = f"store.url=sqlite:///{tmp_path / 'rollouts.db'}"
    assert main(["db", "upgrade", "--set", url]) == 0
    probe = (
        "import sys\nfrom trace_rl.cli.main import main\n"
        f"url = {url!r}\n"
        "for argv in (['settings'], ['runs'], ['query', 'effective-ratio'], ['sql', 'SELECT 1 AS one'], "
        "['db', 'status']):\n"
        "    assert main([*argv, '--set', url]) == 0, argv\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'bm25s') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "train.jsonl: file not found"),
        ("", "train.jsonl: no questions"),
        ('{"id": "1", "question": "Q?", "golden_answers": ["a"]}\n{bad json\n', "train.jsonl:line 2: not valid JSON"),
        ('{"id": "1", "question": "Q?", "golden_answers": "a"}\n', "field 'golden_answers' must be"),
        ("DIR", "a directory, not a file"),
    ],
)
def test_a_bad_question_file_is_one_line_before_any_flow_starts(tmp_path, capsys, content, message):
    train = tmp_path / "train.jsonl"
    if content == "DIR":
        train.mkdir()
    elif content is not None:
        train.write_text(content)
    good = tmp_path / "dev.jsonl"
    good.write_text('{"id": "1", "question": "Q?", "golden_answers": ["a"]}\n')
    (tmp_path / "corpus.jsonl").write_text('{"id": "1", "contents": "\\"A\\"\\ntext"}\n')
    code = main(
        [
            "run",
            "--set",
            "task.source=files",
            "--set",
            f"task.train_file={train}",
            "--set",
            f"task.dev_file={good}",
            "--set",
            f"task.corpus_file={tmp_path / 'corpus.jsonl'}",
            "--set",
            f"run.output_dir={tmp_path / 'runs'}",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs" / "rollouts.db").exists()  # nothing started


def test_a_retrieval_server_that_is_down_is_one_line_before_any_flow_starts(workdir, capsys):
    code = main(
        [
            "run",
            "--set",
            "retriever.name=http",
            "--set",
            "retriever.url=http://127.0.0.1:9/retrieve",
            "--set",
            "retriever.timeout_s=2",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "127.0.0.1:9/retrieve did not answer" in err, err
    assert not (workdir / "runs").exists() and not (workdir / "data").exists()


def test_a_database_of_a_newer_schema_is_one_line_before_any_flow_starts(tmp_path, capsys):
    import sqlite3

    db = tmp_path / "runs" / "rollouts.db"
    RolloutStore(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    assert main(["run", "--set", f"run.output_dir={tmp_path / 'runs'}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "newer than this code's" in err


def test_dvc_plot_files_hold_no_blank_cells(tmp_path):
    import csv

    from trace_rl.report.metrics_files import export_metrics

    history = [
        {"iteration": -1, "eval/em": 0.3, "time/evaluate": 1.0},
        {"iteration": 0, "rollout/effective_ratio": 0.5, "predictor/root_auc": None},
        {"iteration": 1, "rollout/effective_ratio": 0.7, "predictor/root_auc": 0.6, "eval/em": 0.4},
    ]
    export_metrics(tmp_path, history)
    train = list(csv.DictReader((tmp_path / "train.csv").open()))
    dev = list(csv.DictReader((tmp_path / "dev.csv").open()))
    assert [(r["iteration"], r["rollout/effective_ratio"]) for r in train] == [("0", "0.5"), ("1", "0.7")]
    assert "predictor/root_auc" not in train[0] and "eval/em" not in train[0]  # not every iteration has them
    assert [(r["iteration"], r["eval/em"]) for r in dev] == [("-1", "0.3"), ("1", "0.4")]
    assert all(v != "" for r in train + dev for v in r.values())


def test_bench_keeps_the_database_password_out_of_prefect_and_says_in_one_line_when_it_is_unreachable(
    workdir, capsys, monkeypatch
):
    import os

    monkeypatch.setenv("TRACE_STORE__URL", "")  # so that the URL the command moves there is undone afterwards
    url = "postgresql://me:hunter2@127.0.0.1:1/db"
    code = main(["bench", "--quick", "--variants", "uniform", "--seeds", "1", "--set", f"store.url={url}"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "127.0.0.1:1" in err and "hunter2" not in err
    assert os.environ["TRACE_STORE__URL"] == url  # where `run` puts it too: the flow's environment, not its parameters
    assert not (workdir / "bench").exists()


def _model_dir(root, config: str | None = "{}", weights: bytes | None = None):
    model = root / "model"
    model.mkdir()
    if config is not None:
        (model / "config.json").write_text(config)
    if weights is not None:
        (model / "model.safetensors").write_bytes(weights)
    return model


def _truncated_safetensors() -> bytes:
    header = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
    return len(header).to_bytes(8, "little") + header + b"\0" * 7  # 9 of the tensor's 16 bytes missing


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("config.json missing", "no config.json"),
        ("config.json broken", "config.json is not valid JSON"),
        ("no weights", "no weights"),
        ("weights truncated", "model.safetensors is truncated"),
        ("weights garbage", "model.safetensors is not a safetensors file"),
        ("cuda on a CPU build", "sees no CUDA device"),
        ("deeply nested question file", "train.jsonl:line 1: JSON nested too deeply"),
    ],
)
def test_a_bad_model_folder_device_or_input_file_is_one_line_before_any_flow_starts(workdir, capsys, case, message):
    args = ["run", "--set", "model.preset=path"]
    if case == "config.json missing":
        args += ["--set", f"model.path={_model_dir(workdir, config=None)}"]
    elif case == "config.json broken":
        args += ["--set", f"model.path={_model_dir(workdir, config='{bad')}"]
    elif case == "no weights":
        args += ["--set", f"model.path={_model_dir(workdir)}"]
    elif case == "weights truncated":
        args += ["--set", f"model.path={_model_dir(workdir, weights=_truncated_safetensors())}"]
    elif case == "weights garbage":
        args += ["--set", f"model.path={_model_dir(workdir, weights=b'not a model at all')}"]
    elif case == "cuda on a CPU build":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA device")
        args = ["run", "--set", "model.device=cuda"]
    else:
        deep = workdir / "train.jsonl"
        deep.write_text('{"id": "1", "question": ' + "[" * 50000 + "]" * 50000 + ', "golden_answers": ["a"]}\n')
        files = [f"task.{k}_file={deep}" for k in ("train", "dev", "test", "corpus")]
        args = ["run", "--set", "task.source=files", *[a for f in files for a in ("--set", f)]]
    assert main(args) in (1, 2)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_damaged_database_or_an_unwritable_csv_is_one_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"\x13\x37" * 4096)
    for command in (["db", "status"], ["runs"], ["query", "effective-ratio"]):
        assert main([*command, "--set", f"store.url=sqlite:///{garbage}"]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "file is not a database" in err, (command, err)
    good = f"store.url=sqlite:///{tmp_path / 'rollouts.db'}"
    assert main(["db", "upgrade", "--set", good]) == 0
    capsys.readouterr()
    if Path("/dev/full").exists():
        assert main(["sql", "SELECT 1 AS one", "--csv", "/dev/full", "--overwrite", "--set", good]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "cannot write /dev/full: No space left on device" in err


def test_a_run_another_live_process_writes_is_refused_in_one_line_before_any_flow_starts(tmp_path, capsys):
    store = RolloutStore(f"sqlite:///{tmp_path / 'runs' / 'rollouts.db'}")
    try:
        run = store.open_run("busy", {}, "h", "test")
        store.take_lease(run, "busy", ttl_s=60)  # this process writes it (as a second `trace-rl run` would see)
        code = main(["run", "--set", f"run.output_dir={tmp_path / 'runs'}", "--set", "run.name=busy"])
        err = capsys.readouterr().err.strip()
        assert code == 1 and len(err.splitlines()) == 1 and "run 'busy' is being written by" in err, err
        assert "Traceback" not in err and "prefect" not in err.lower()
    finally:
        store.release_lease("done")
        store.close()
