from pathlib import Path

import pytest

from trace_rl.config.settings import SETTINGS_FILE_ENV, SettingsError, defaults_toml, load_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for key in list(__import__("os").environ):
        if key.startswith("TRACE_"):
            monkeypatch.delenv(key)


def test_the_repository_settings_file_holds_the_embedded_defaults():
    assert (REPO / "settings.toml").read_text() == defaults_toml()


def test_the_toml_file_then_environment_then_overrides_take_precedence(monkeypatch, tmp_path):
    (tmp_path / "settings.toml").write_text("[agent]\nmax_turns = 5\nmax_tokens_per_turn = 30\n")
    assert load_settings().agent.max_turns == 5
    monkeypatch.setenv("TRACE_AGENT__MAX_TURNS", "6")
    s = load_settings()
    assert (s.agent.max_turns, s.agent.max_tokens_per_turn) == (6, 30)
    assert load_settings(["agent.max_turns=7"]).agent.max_turns == 7


def test_a_settings_file_can_be_named_by_environment_variable(monkeypatch, tmp_path):
    other = tmp_path / "other.toml"
    other.write_text('[run]\nname = "exp-1"\n')
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(other))
    assert load_settings().run.name == "exp-1"
    monkeypatch.setenv(SETTINGS_FILE_ENV, str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="missing.toml: file not found"):
        load_settings()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("agent.max_turns=0", "agent.max_turns: Input should be greater than or equal to 1"),
        ("agent.max_turns=many", "agent.max_turns: Input should be a valid integer"),
        ("agent.bogus=1", "agent.bogus: unknown key"),
        ("nosection.key=1", "nosection: unknown key"),
        ("model.preset=path", "model: preset='path' needs model.path"),
        ("warmstart.success_low=0.9", "success_low must be below warmstart.success_high"),
        ("task.source=files", "task: source='files' needs task.train_file, task.dev_file, task.corpus_file"),
        ("headroom.samples=15", "headroom.samples: must be even"),
        ("trace.oracle_samples=7", "oracle_samples=7: must be even"),
        ("model.device=tpu9", "model.device: 'tpu9' is not a torch device"),
        ("model.path=/tmp", "model.path is set but preset='tiny' ignores it"),
        ('orchestration.cron="not a cron"', "orchestration.cron: 'not a cron' is not a cron schedule"),
        ("task.hop_shares=[1.0, 2.0]", "task.hop_shares=[1.0, 2.0]: give 3 non-negative weights"),
        ("trace.root_split=narrow", "trace.root_split: Input should be 'deep' or 'wide'"),
        ("task.data_dir=", "task.data_dir: an empty path"),
        ('run.output_dir=" "', "run.output_dir: an empty path"),
    ],
)
def test_bad_settings_are_refused_with_the_key_and_the_reason(override, message):
    with pytest.raises(SettingsError) as err:
        load_settings([override])
    assert message in str(err.value)


def test_a_malformed_settings_file_is_named(tmp_path):
    (tmp_path / "settings.toml").write_text("[agent\nmax_turns = 3\n")
    with pytest.raises(SettingsError, match="settings.toml: not valid TOML"):
        load_settings()


def test_a_settings_file_that_is_a_folder_or_not_utf8_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACE_SETTINGS_FILE", str(tmp_path))
    with pytest.raises(SettingsError, match="a directory, not a settings file"):
        load_settings()
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'[run]\nname = "caf\xe9"\n')
    monkeypatch.setenv("TRACE_SETTINGS_FILE", str(latin))
    with pytest.raises(SettingsError, match="latin.toml: not UTF-8"):
        load_settings()


def test_a_cron_schedule_and_a_cuda_device_are_accepted():
    s = load_settings(['orchestration.cron="0 3 * * *"', "model.device=cuda:1"])
    assert (s.orchestration.cron, s.model.device) == ("0 3 * * *", "cuda:1")


def test_an_override_without_equals_sign_is_refused():
    with pytest.raises(SettingsError, match="section.key=value"):
        load_settings(["agent.max_turns"])


@pytest.mark.parametrize("name", ["/some/dir", "..", ".", "a/b", "../escape", "-flag", "a\\b", "with space", ""])
def test_a_run_name_that_is_not_a_plain_folder_name_is_refused(name):
    with pytest.raises(SettingsError, match="run.name"):
        load_settings([f'run.name="{name}"'])


def test_plain_run_names_are_accepted():
    assert load_settings(["run.name=exp-1.2_b"]).run.name == "exp-1.2_b"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("policy.learning_rate=inf", "policy.learning_rate: Input should be a finite number"),
        ("predictor.learning_rate=nan", "predictor.learning_rate: Input should be a finite number"),
        ("train.iterations=true", "train.iterations: expected a number, got the boolean true"),
        ("policy.clip_eps=false", "policy.clip_eps: expected a number, got the boolean false"),
    ],
)
def test_infinite_and_boolean_numbers_are_refused(override, message):
    with pytest.raises(SettingsError) as err:
        load_settings([override])
    assert message in str(err.value)


def test_a_store_url_never_becomes_a_flow_parameter():
    from trace_rl.config.settings import refuse_secret_parameters, split_secrets

    public, env = split_secrets(["run.name=x", "store.url=postgresql://me:hunter2@db/x"])
    assert public == ["run.name=x"] and env == {"TRACE_STORE__URL": "postgresql://me:hunter2@db/x"}
    with pytest.raises(SettingsError, match="TRACE_STORE__URL") as err:
        refuse_secret_parameters(["store.url=postgresql://me:hunter2@db/x"])
    assert "hunter2" not in str(err.value)


def test_headroom_halves_must_cover_the_per_prompt_cap_only_when_measured():
    with pytest.raises(SettingsError, match="half of them must be at least trace.max_per_prompt=8"):
        load_settings(["headroom.every=5", "headroom.samples=10"])
    load_settings(["headroom.samples=10"])  # never measured: no constraint
    load_settings(["headroom.every=5", "headroom.samples=10", "trace.max_per_prompt=5"])


def test_the_oracle_control_steers_only_a_predicted_stage1_and_never_beside_the_ledger():
    assert load_settings(["trace.oracle_samples=8"]).trace.oracle_samples == 8
    with pytest.raises(SettingsError, match="not 'uniform'"):
        load_settings(["trace.oracle_samples=8", "trace.allocator=uniform"])
    with pytest.raises(SettingsError, match="set one of them"):
        load_settings(["trace.oracle_samples=8", "headroom.every=2"])
    # a run stored before the key existed keeps its identity; one that uses it does not share it
    assert "oracle_samples" not in load_settings().identity()["trace"]
    assert load_settings(["trace.oracle_samples=8"]).identity()["trace"]["oracle_samples"] == 8


def test_keys_added_later_leave_the_identity_of_runs_that_predate_them_unless_used():
    # a run stored before predictor.mixedness and run.init_from existed resumes under today's defaults
    plain = load_settings([])
    assert "mixedness" not in plain.identity()["predictor"] and "init_from" not in plain.identity()["run"]
    mixing = load_settings(["predictor.mixedness=true"])
    assert mixing.identity()["predictor"]["mixedness"] is True
    assert "explore_share" not in plain.identity()["trace"]
    exploring = load_settings(["trace.explore_share=0.25"])
    assert exploring.identity()["trace"]["explore_share"] == 0.25
    with pytest.raises(SettingsError, match="explore_share"):
        load_settings(["trace.explore_share=1.0"])


def test_the_difficulty_mix_and_root_split_keys_leave_todays_runs_and_tiny_model_as_they_were():
    from trace_rl.flows.pipeline import tiny_model_digest

    plain = load_settings([])
    assert "hop_shares" not in plain.identity()["task"] and "root_split" not in plain.identity()["trace"]
    spelt_out = load_settings(["task.hop_shares=[]", "task.name_sharing=3", "trace.root_split=deep"])
    assert spelt_out.identity() == plain.identity() and tiny_model_digest(spelt_out) == tiny_model_digest(plain)
    mixed = load_settings(["task.max_hops=4", "task.hop_shares=[0.4, 0.1, 0.1, 0.4]"])
    assert mixed.identity()["task"]["hop_shares"] == [0.4, 0.1, 0.1, 0.4]
    assert tiny_model_digest(mixed) != tiny_model_digest(plain)


def test_the_headroom_measurement_is_not_part_of_a_runs_identity():
    plain, measured = load_settings(), load_settings(["headroom.every=5"])
    assert plain.identity() == measured.identity()
    assert plain.snapshot() != measured.snapshot()


def test_a_flow_runs_parameters_merge_over_the_served_settings_instead_of_replacing_them():
    from trace_rl.config.settings import flow_overrides

    served = ["train.iterations=2", "trace.budget=16"]
    merged = flow_overrides(served, ["trace.allocator=uniform"], iterations=None, run_name="try")
    s = load_settings(merged)
    assert (s.train.iterations, s.trace.budget, s.trace.allocator, s.run.name) == (2, 16, "uniform", "try")
    assert load_settings(flow_overrides(served, allocator="prompt_only", iterations=5)).train.iterations == 5
    with pytest.raises(SettingsError, match="store.url must not be a flow or deployment parameter"):
        flow_overrides(served, ["store.url=sqlite:///x.db"])


def test_the_tiny_model_does_not_depend_on_how_the_data_folder_is_spelt(tmp_path, monkeypatch):
    from trace_rl.flows.pipeline import tiny_model_digest

    monkeypatch.chdir(tmp_path)
    relative = load_settings(["task.data_dir=data/synthetic"])
    absolute = load_settings([f"task.data_dir={tmp_path / 'data' / 'synthetic'}"])
    assert tiny_model_digest(relative) == tiny_model_digest(absolute)
    assert tiny_model_digest(relative) != tiny_model_digest(load_settings(["task.n_train=100"]))


def test_the_smollm2_preset_says_at_start_up_that_it_is_not_warm_started(tmp_path):
    from trace_rl.flows.pipeline import prepare_model

    (tmp_path / "smollm2-135m-instruct").mkdir()
    (tmp_path / "smollm2-135m-instruct" / "config.json").write_text("{}")  # already converted
    s = load_settings(["model.preset=smollm2", f"model.models_dir={tmp_path}"])
    said: list[str] = []
    assert prepare_model(s, None, None, said.append) == tmp_path / "smollm2-135m-instruct"  # type: ignore[arg-type]
    assert len(said) == 1 and "no warm start" in said[0] and "reward 0" in said[0]


def test_a_run_name_may_hold_date_and_time_placeholders_and_nothing_else():
    from datetime import UTC, datetime

    s = load_settings(["run.name=nightly-{date}-{time}"])
    assert s.named_at(datetime(2026, 12, 7, 3, 4, tzinfo=UTC)).run.name == "nightly-20261207-0304"
    assert s.run.name == "nightly-{date}-{time}"  # the template stays in the settings; each start fills it
    with pytest.raises(SettingsError, match=r"only the placeholders \{date\}, \{time\}, \{datetime\}"):
        load_settings(["run.name=nightly-{week}"])
