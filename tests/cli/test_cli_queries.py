from tests.helpers import make_tree, save_trees
from trace_rl.cli.main import main


def _seed(store):
    run = store.open_run("fx", {}, "h", "test")
    save_trees(store, run, 0, [make_tree("q1", [1.0, 0.0]), make_tree("q2", [0.0, 0.0])], "trace")


def test_named_queries_print_tables_and_write_csv(store, capsys, tmp_path):
    _seed(store)
    url = f"store.url={store.url}"
    assert main(["query", "effective-ratio", "--run", "fx", "--set", url, "--csv", str(tmp_path / "e.csv")]) == 0
    out = capsys.readouterr().out
    assert "effective_ratio" in out and "fx" in out and (tmp_path / "e.csv").exists()
    assert main(["query", "tree", "1", "--set", url]) == 0
    assert "Q: Where was q1 born?" in capsys.readouterr().out


def test_sql_refuses_a_write_with_a_one_line_message(store, capsys):
    _seed(store)
    assert main(["sql", "DELETE FROM nodes", "--set", f"store.url={store.url}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "read-only" in err


def test_a_bad_database_url_is_a_one_line_error_without_the_password(capsys):
    code = main(["query", "effective-ratio", "--set", "store.url=postgresql://me:hunter2@127.0.0.1:1/db"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "127.0.0.1:1" in err and "hunter2" not in err


def test_a_query_for_a_run_that_does_not_exist_says_so_and_names_the_runs_there_are(store, capsys):
    _seed(store)
    assert main(["query", "effective-ratio", "--run", "nosuchrun", "--set", f"store.url={store.url}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no run named 'nosuchrun'" in err and "runs: fx" in err


def test_calibration_with_no_bins_is_a_one_line_error(store, capsys):
    _seed(store)
    assert main(["query", "calibration", "--bins", "0", "--set", f"store.url={store.url}"]) == 2
    assert "--bins must be at least 1" in capsys.readouterr().err


def test_csv_never_overwrites_the_database_it_reads_or_an_existing_file_unless_told(store, capsys, tmp_path):
    _seed(store)
    url = f"store.url={store.url}"
    if store.url.startswith("sqlite:///"):
        database = store.url.removeprefix("sqlite:///")
        before = open(database, "rb").read()
        assert main(["sql", "SELECT 1 AS one", "--set", url, "--csv", database]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "the rollout database being read" in err
        assert open(database, "rb").read() == before
    mine = tmp_path / "mine.csv"
    mine.write_text("my own data\n")
    assert main(["sql", "SELECT 1 AS one", "--set", url, "--csv", str(mine)]) == 2
    assert "add --overwrite" in capsys.readouterr().err and mine.read_text() == "my own data\n"
    assert main(["sql", "SELECT 1 AS one", "--set", url, "--csv", str(mine), "--overwrite", "--allow-superuser"]) == 0
    assert mine.read_text().splitlines()[0] == "one"
