"""Policy as code: every file in ``policies/`` is validated with file and line, by
``consentry policy check`` and at start-up (a broken policy stops ``consentry serve``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.cli import main as cli_main
from app.consent.check import CHECKED_FILES, PolicyError, PolicyProblem, check_policies
from app.consent.rules import POLICY_FILES, policy_version
from app.settings import get_settings
from tests.conftest import Env
from tests.helpers import free_port

SHIPPED = Path(__file__).resolve().parent.parent / "policies"


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A copy of the shipped policies to break."""
    target = tmp_path / "policies"
    shutil.copytree(SHIPPED, target)
    return target


def replace(path: Path, old: str, new: str) -> int:
    """Replace ``old`` (which must occur once) and return the 1-based line where it was."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path.name}"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return text[: text.index(old)].count("\n") + 1


def line_of(path: Path, needle: str) -> int:
    text = path.read_text(encoding="utf-8")
    assert text.count(needle) == 1, needle
    return text[: text.index(needle)].count("\n") + 1


def only(problems: list[PolicyProblem], file: str) -> PolicyProblem:
    assert len(problems) == 1, [str(p) for p in problems]
    assert problems[0].file == file
    return problems[0]


def test_shipped_policies_are_sound() -> None:
    assert check_policies(SHIPPED) == []


def test_every_versioned_file_is_checked() -> None:
    assert set(POLICY_FILES) <= set(CHECKED_FILES)
    assert {p.name for p in SHIPPED.glob("*.yaml")} <= set(CHECKED_FILES)


def test_yaml_syntax_error_names_the_parsers_line(policies: Path) -> None:
    line = replace(
        policies / "identity.yaml", "  phone:          {cap: 5, merge: true}", "  phone: {cap: 5, merge: [true}"
    )
    p = only(check_policies(policies), "identity.yaml")
    assert p.line == line
    assert "YAML syntax error" in p.problem


def test_unknown_category_in_purposes(policies: Path) -> None:
    line = replace(
        policies / "purposes.yaml",
        "categories: [user.behavior, user.device, user.demographic]",
        "categories: [user.behavior, user.device, user.demographics]",
    )
    p = only(check_policies(policies), "purposes.yaml")
    assert p.line == line
    assert "unknown data category 'user.demographics'" in p.problem
    assert "analytics.reporting" in p.problem


def test_unknown_purpose_in_jurisdictions(policies: Path) -> None:
    path = policies / "jurisdictions.yaml"
    text = path.read_text(encoding="utf-8")
    start = text.index("  CCPA:")
    old = "      analytics.reporting: opt_out\n"
    at = text.index(old, start)
    path.write_text(text[:at] + "      analytics.reportng: opt_out\n" + text[at + len(old) :], encoding="utf-8")
    p = only(check_policies(policies), "jurisdictions.yaml")
    assert p.line == text[:at].count("\n") + 1
    assert "jurisdiction CCPA" in p.problem and "unknown purpose 'analytics.reportng'" in p.problem


def test_role_default_the_role_may_not_use(policies: Path) -> None:
    line = replace(policies / "purposes.yaml", "  auditor: audit.review", "  auditor: essential.service")
    p = only(check_policies(policies), "purposes.yaml")
    assert p.line == line
    assert "auditor" in p.problem and "may not use" in p.problem


def test_bad_regex_in_name_patterns(policies: Path) -> None:
    line = replace(policies / "data_categories.yaml", "'^sex$', ", "'^sex$', '(unclosed', ")
    p = only(check_policies(policies), "data_categories.yaml")
    assert p.line == line
    assert "invalid regular expression '(unclosed'" in p.problem


def test_unknown_default_jurisdiction(policies: Path) -> None:
    line = replace(policies / "jurisdictions.yaml", "default: STRICT", "default: NOWHERE")
    p = only(check_policies(policies), "jurisdictions.yaml")
    assert p.line == line
    assert "unknown jurisdiction 'NOWHERE'" in p.problem


def test_negative_retention(policies: Path) -> None:
    line = replace(policies / "retention.yaml", "  analytics.reporting: 1095", "  analytics.reporting: -30")
    p = only(check_policies(policies), "retention.yaml")
    assert p.line == line
    assert "at least 1" in p.problem and "-30" in p.problem


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        (
            "purposes.yaml",
            "    reveal: masked\n    categories: [user.behavior",
            "    reveal: maskd\n    categories: [user.behavior",
            "reveal must be one of plain, masked, none",
        ),
        ("purposes.yaml", "roles: [marketer, admin]", "roles: [marketer, admins]", "unknown role 'admins'"),
        ("purposes.yaml", "    profiling: true", "    profiling: sometimes", "profiling must be true or false"),
        ("data_categories.yaml", "  ip_address: ip", "  ip_address: ipv4", "unknown trait 'ipv4'"),
        (
            "data_categories.yaml",
            "normalize: email, index: email",
            "normalize: mail, index: email",
            "normalize must be one of",
        ),
        ("data_categories.yaml", "  user.financial: [", "  user.finance: [", "unknown data category 'user.finance'"),
        (
            "identity.yaml",
            "  user_id:        {cap: 1, merge: true}",
            "  user_id:        {cap: one, merge: true}",
            "cap must be a whole number",
        ),
        (
            "identity.yaml",
            "stitch_only: true}\n  anonymous_id",
            "stitch_only: yes please}\n  anonymous_id",
            "stitch_only must be true or false",
        ),
        ("jurisdictions.yaml", "    regions: [US-CA]", "    regions: [US-CA, DE]", "region DE is already in"),
        ("jurisdictions.yaml", "    regions: [CN]", "    regions: [China]", "not an ISO 3166"),
        ("jurisdictions.yaml", "    minor_age: 14", "    minor_age: fourteen", "minor_age must be a whole number"),
        (
            "jurisdictions.yaml",
            "    gpc: [marketing.advertising.first_party.targeted]\n    gpc_overridable: true",
            "    gpc: [marketing.email]\n    gpc_overridable: true",
            "unknown purpose 'marketing.email'",
        ),
        (
            "jurisdictions.yaml",
            "user.financial, user.location.precise, user.health_and_medical, user.biometric, "
            "user.demographic.religious_belief, user.childrens]",
            "user.financial, user.location.precise, user.health, user.biometric, user.demographic.religious_belief, "
            "user.childrens]",
            "unknown data category 'user.health'",
        ),
        (
            "jurisdictions.yaml",
            "      analytics.reporting: opt_in\n    gpc: []\n    gpc_overridable: true\n"
            "    sensitive: [user.government_id, user.financial, user.location.precise, user.health_and_medical, "
            "user.biometric, user.demographic.religious_belief",
            "      analytics.reporting: opt-in\n    gpc: []\n    gpc_overridable: true\n"
            "    sensitive: [user.government_id, user.financial, user.location.precise, user.health_and_medical, "
            "user.biometric, user.demographic.religious_belief",
            "must be one of opt_in, opt_out, none",
        ),
        ("notices.yaml", "current: privacy-2026-09", "current: privacy-2027-01", "unknown notice 'privacy-2027-01'"),
        (
            "consent_mapping.yaml",
            "  C0002: [analytics.reporting]",
            "  C0002: [analytics]",
            "unknown purpose 'analytics'",
        ),
        (
            "consent_mapping.yaml",
            '  "8": [analytics.reporting]',
            '  "12": [analytics.reporting]',
            "not a TCF v2.2 purpose id",
        ),
        ("retention.yaml", "  user.unknown: 90", "  user.unknwn: 90", "unknown data category 'user.unknwn'"),
        ("retention.yaml", "inactive_profile_days: 1095", "inactive_profile_days: 0", "at least 1"),
        ("text_channels.yaml", "  chat: {}", "  chat: [x]", "must be a mapping"),
    ],
)
def test_each_breakage_is_reported_where_it_is(policies: Path, file: str, old: str, new: str, expected: str) -> None:
    line = replace(policies / file, old, new)
    p = only(check_policies(policies), file)
    assert expected in p.problem
    assert p.line is not None and line <= p.line <= line + new.count("\n")


def test_unknown_and_duplicate_keys_and_missing_files(policies: Path) -> None:
    line = replace(policies / "purposes.yaml", "    profiling: true", "    profiling: true\n    profilng: false")
    p = only(check_policies(policies), "purposes.yaml")
    assert (p.line, "unknown key 'profilng'" in p.problem) == (line + 1, True)

    replace(policies / "purposes.yaml", "    profilng: false", "    profiling: false")
    p = only(check_policies(policies), "purposes.yaml")
    assert p.line == line + 1 and "duplicate key 'profiling'" in p.problem

    shutil.copy(SHIPPED / "purposes.yaml", policies / "purposes.yaml")
    (policies / "notices.yaml").unlink()
    assert [str(p) for p in check_policies(policies)] == ["notices.yaml: file is missing"]


def test_a_value_yaml_cannot_build_is_reported_on_its_line(policies: Path) -> None:
    line = replace(policies / "notices.yaml", "effective: 2026-09-01", "effective: 2026-02-30")
    p = only(check_policies(policies), "notices.yaml")
    assert p.line == line and "2026-02-30" in p.problem


def test_unquoted_no_is_not_norway(policies: Path) -> None:
    line = replace(policies / "jurisdictions.yaml", '"NO", GB]', "NO, GB]")
    p = only(check_policies(policies), "jurisdictions.yaml")
    assert p.line == line and "not False" in p.problem


def test_a_broken_purposes_file_does_not_cascade(policies: Path) -> None:
    """A file that does not parse is reported once; references to it are not checked against nothing."""
    replace(policies / "purposes.yaml", "purposes:\n", "purposes: [\n")
    problems = check_policies(policies)
    assert {p.file for p in problems} == {"purposes.yaml"}


def test_cli_check_ok_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["policy", "check", "--dir", str(SHIPPED)]) == 0
    assert capsys.readouterr().out.strip() == f"OK: policy version {policy_version(SHIPPED)}"
    assert cli_main(["policy", "version", "--dir", str(SHIPPED)]) == 0
    assert capsys.readouterr().out.strip() == policy_version(SHIPPED)


def test_cli_check_broken_exits_1_with_file_and_line(policies: Path) -> None:
    line = replace(policies / "retention.yaml", "  analytics.reporting: 1095", "  analytics.reporting: -1")
    line2 = replace(policies / "jurisdictions.yaml", "default: STRICT", "default: NOWHERE")
    done = subprocess.run(
        [sys.executable, "-m", "app", "policy", "check", "--dir", str(policies)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert any(x.startswith(f"retention.yaml:{line}: ") for x in lines), done.stdout
    assert any(x.startswith(f"jurisdictions.yaml:{line2}: ") for x in lines), done.stdout
    assert len(lines) == 2


def test_cli_check_uses_the_configured_directory(
    policies: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    replace(policies / "notices.yaml", "current: privacy-2026-09", "current: nope")
    monkeypatch.setenv("CONSENTRY_POLICY_DIR", str(policies))
    get_settings.cache_clear()
    try:
        assert cli_main(["policy", "check"]) == 1
    finally:
        get_settings.cache_clear()
    assert capsys.readouterr().out.startswith("notices.yaml:")


def test_broken_policy_stops_the_app(env: Env, policies: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.helpers import client

    replace(policies / "purposes.yaml", "  auditor: audit.review", "  auditor: nothing.at.all")
    monkeypatch.setenv("CONSENTRY_POLICY_DIR", str(policies))
    get_settings.cache_clear()
    with pytest.raises(Exception) as info, client():  # Litestar may wrap it in an ExceptionGroup
        pass
    found = policy_errors(info.value)
    assert found and "purposes.yaml:" in str(found[0])


def policy_errors(exc: BaseException) -> list[PolicyError]:
    if isinstance(exc, PolicyError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in policy_errors(sub)]
    return policy_errors(exc.__cause__) if exc.__cause__ else []


def test_broken_policy_stops_consentry_serve(env: Env, policies: Path) -> None:
    line = replace(
        policies / "purposes.yaml",
        "categories: [user.behavior, user.device, user.demographic]",
        "categories: [user.behavior, user.device, user.demografic]",
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        env={**env.environ(), "CONSENTRY_POLICY_DIR": str(policies)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("consentry serve kept running on a broken policy")
    assert proc.returncode != 0
    assert f"purposes.yaml:{line}:" in stderr
    assert "user.demografic" in stderr
    assert time.monotonic() - started < 60


def test_policy_version_follows_content(policies: Path) -> None:
    v0 = policy_version(policies)
    assert v0 == policy_version(SHIPPED)
    for name in (p.name for p in policies.iterdir()):
        (policies / name).touch()  # a new modification time is not a new content
    assert policy_version(policies) == v0
    seen = {v0}
    for name in POLICY_FILES:
        path = policies / name
        original = path.read_bytes()
        path.write_bytes(original + b"\n# an edit\n")
        changed = policy_version(policies)
        assert changed not in seen, name
        seen.add(changed)
        path.write_bytes(original)
        assert policy_version(policies) == v0, name
