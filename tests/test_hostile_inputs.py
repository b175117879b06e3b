"""Malformed and hostile input: one `error:` line naming the field, exit 2, for every file and option.

tests/corpus/ holds schedule files (plan files among them), problem files and
torch CSVs, each broken in one way (and valid/, files that must be accepted);
cases.json says what the error must name and whether the JSON
Schemas in schemas/ see the fault too (rules that tie fields together are the
reader's alone, docs/design.md section 5). Every command that reads a file is
run on every file of its kind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from typer.testing import CliRunner

from pipesynth.cli import app
from pipesynth.construct import GENERATORS, generate
from pipesynth.formats import schedule_json

HERE = Path(__file__).parent
ROOT = HERE.parent
CORPUS = HERE / "corpus"
CASES = json.loads((CORPUS / "cases.json").read_text())
#: A plan file as `pipesynth plan` writes it (the tiny Llama of examples/ on 2 GPUs): the plan corpus's base.
VALID_PLAN = CORPUS / "valid" / "tiny-llama-plan.json"
SCHEMAS = {
    name: json.loads((ROOT / "schemas" / f"pipesynth.{name}-1.schema.json").read_text())
    for name in ("schedule", "problem")
}
REGISTRY = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in SCHEMAS.values())
VALIDATORS = {name: Draft202012Validator(schema, registry=REGISTRY) for name, schema in SCHEMAS.items()}

#: Every command that reads each kind of file, with the options that make it read and stop.
READERS = {
    "schedule": [
        ["validate"],
        ["simulate", "--json"],
        ["show", "--no-color"],
        ["export", "--to", "torch-csv"],
        ["train", "--steps", "1"],
        ["solve", "-q", "-t", "1", "--problem"],
    ],
    "problem": [["solve", "-q", "-t", "1", "--problem"]],
    "csv": [["import"]],
}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_error(result, fragment, lines_allowed=1, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert 1 <= len(lines) <= lines_allowed and all(line.startswith("error: ") for line in lines), result.stderr
    assert any(fragment in line for line in lines), f"{fragment!r} not in {result.stderr!r}"


def kind_of(case):
    return case["file"].split("/")[0]


def test_the_corpus_covers_every_kind_and_more_than_a_hundred_files():
    kinds = [kind_of(case) for case in CASES]
    assert len(CASES) >= 100 and {"schedule", "problem", "csv"} == set(kinds)
    assert len(BAD_OPTIONS) >= 30
    assert all((CORPUS / case["file"]).is_file() for case in CASES)


def readers_of(index: int, case) -> list[list[str]]:
    """The first reader of the file's kind (validate for schedules) and one more, taking turns over the corpus."""
    readers = READERS[kind_of(case)]
    return readers if len(readers) == 1 else [readers[0], readers[1 + index % (len(readers) - 1)]]


@pytest.mark.parametrize("index,case", list(enumerate(CASES)), ids=[case["file"] for case in CASES])
def test_every_command_refuses_broken_files_naming_the_field(index, case):
    path = CORPUS / case["file"]
    for command in readers_of(index, case):
        result = run(*command, path)
        # validate lists every violation, one line each; every other command says the first in one line
        assert_error(result, case["says"], lines_allowed=30 if command == ["validate"] else 1, code=case["exit"])


SCHEMA_CASES = [case for case in CASES if "schema" in case]


def plain_json(path: Path):
    """The file as a JSON validator sees it; None when it is not JSON at all (NaN, bad bytes, too deep)."""

    def refuse(literal):
        raise ValueError(literal)

    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def schema_verdict(kind: str, data) -> str:
    return "reject" if data is None or any(VALIDATORS[kind].iter_errors(data)) else "accept"


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=[case["file"] for case in SCHEMA_CASES])
def test_the_schema_sees_each_fault_of_form_and_only_those(case):
    path = CORPUS / case["file"]
    data = plain_json(path)
    kind = "schedule" if isinstance(data, dict) and "format" in data else kind_of(case)
    assert schema_verdict(kind, data) == case["schema"]


def valid_files():
    files = [*sorted((ROOT / "schedules").glob("*.json")), VALID_PLAN]
    generated = [generate(name, 3, 6, chunks=2, cost={"F": 1.5, "B": 2, "W": 0.5}, comm=0.25) for name in GENERATORS]
    return [f.read_text() for f in files] + [schedule_json.dumps(s) for s in generated]


def test_the_reader_and_the_schema_accept_every_valid_file(tmp_path):
    texts = valid_files()
    assert len(texts) > 20
    for text in texts:
        schedule = schedule_json.loads(text)
        data = json.loads(text)
        assert schema_verdict("schedule", data) == "accept"
        assert schema_verdict("problem", data["problem"]) == "accept"
        assert schedule_json.loads(schedule_json.dumps(schedule)) == schedule
    (tmp_path / "p.json").write_text(json.dumps(json.loads(texts[0])["problem"]))
    assert schedule_json.load_problem(tmp_path / "p.json") == schedule_json.loads(texts[0]).problem


def test_a_byte_order_mark_and_a_plan_are_accepted(tmp_path):
    text = VALID_PLAN.read_text()
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert run("validate", path).exit_code == 0
    assert schema_verdict("schedule", json.loads(text)) == "accept"


BAD_OPTIONS = [
    (["schedule", "1f1b", "-d", "99999999999999999999", "-m", 2], "devices: 99999999999999999999 is more than"),
    (["schedule", "interleaved-1f1b", "-d", 99999999999, "-m", 2, "-v", 99999999], "devices: 99999999999 is more"),
    (["schedule", "1f1b", "-d", 2, "-m", 1000000000], "microbatches: 2 stages x 1000000000 microbatches"),
    (["block", "v-half", "-d", 99999999999], "devices: 99999999999 is more than"),
    (["pareto", "-d", 99999999999999, "-m", 2], "no schedule family runs this case; gpipe: devices"),
    (["solve", "-d", 2, "-m", 2, "--memory", "1e400GiB"], "memory: '1e400gib' is out of range"),
    (["solve", "-d", 2, "-m", 2, "--memory", "1e99999999999999GiB"], "is out of range"),
    (["solve", "-d", 2, "-m", 2, "--memory", "12XB"], "unknown size suffix 'xb'"),
    (["solve", "-d", 2, "-m", 2, "--memory", "12GiB"], "is a byte size, but this problem's memory is not in bytes"),
    (["schedule", "1f1b", "-d", 2, "-m", 2, "--cap", "infx"], "memory.cap[0]: expected a finite number, got inf"),
    (["schedule", "1f1b", "-d", 2, "-m", 2, "--cap", "nanx"], "memory.cap[0]: expected a finite number, got nan"),
    (["schedule", "1f1b", "-d", 2, "-m", 2, "--cap", "-1x"], "memory.cap[0]: must be non-negative"),
    (["schedule", "1f1b", "-d", 2, "-m", 2, "--cap", "1e20"], "memory.cap[0]: 1e+20 is out of range"),
    (["schedule", "1f1b", "-d", 2, "-m", 2, "--cap", "1e400"], "--cap: '1e400' is not a finite number"),
    (["schedule", "1f1b", "-d", 2, "-m", 2, "--cost", "F=1e308"], "cost.F[0]: 1e+308 is out of range"),
    (["schedule", "1f1b", "-d", 2, "-m", 2, "--cost", "F=nan"], "--cost F: 'nan' is not a finite number"),
    (["schedule", "1f1b", "-d", 2, "-m", 2, "--comm", 1e300], "comm: 1e+300 is out of range"),
    (["schedule", "1f1b", "-d", 2, "-m", 2, "--activation", "inf"], "--activation: 'inf' is not a finite number"),
    (["schedule", "zb-h1", "-d", 2, "-m", 2, "--kept-for-w", 2], "memory.kept_for_w[0]: 2 exceeds the activation 1"),
    (["pareto", "-d", 2, "-m", 2, "--cost", "F=1e400"], "--cost F: '1e400' is not a finite number"),
    (["solve", "-d", 2, "-m", 2, "--placement", "0,1,99999999999999999999"], "placement[2]: device 99999"),
    (["solve", "-d", 2, "-m", 2, "--workers", 99999999999999], "Invalid value for '--workers'"),
    (["solve", "-d", 2, "-m", 2, "--seed", 99999999999999999999999], "Invalid value for '--seed'"),
    (["solve", "-d", 4, "-m", 8, "--memory", "1.5"], "infeasible: no schedule fits 1.5 units on device 0"),
    (["solve", "--problem", "missing.json"], "missing.json: cannot read (No such file or directory)"),
    (["validate", "/dev/null"], "/dev/null: not valid JSON"),
    (["import", "0F0.csv", "--cost", "F=-1"], "cost.F[0]: must be non-negative, got -1"),
    (["import", "0F0.csv", "--name", "bad\udcffname"], "name: holds \\udcff, an unpaired surrogate"),
    (["train", "ok.json", "--device", "foo"], "device: cannot read 'foo'; give cpu or cuda"),
    (["train", "ok.json", "--device", "meta"], "device: 'meta' is not supported"),
    (["train", "ok.json", "--timeout", 0], "timeout: must be a positive number of seconds, got 0.0"),
    (["train", "ok.json", "--timeout", "nan"], "timeout: must be a positive number of seconds, got nan"),
    (["train", "ok.json", "--seed", 2**40], "Invalid value for '--seed'"),
    (["train", "ok.json", "--timeout", 1e300], "timeout: 1e+300 seconds; at most 86,400 (a day)"),
    (["train", "ok.json", "--microbatch-size", 10**9], "microbatch_size: 1000000000 x 32 tokens per microbatch; at"),
    (["train", "ok.json", "--lr", "nan"], "lr: must be a positive finite learning rate, got nan"),
    (["train", "ok.json", "--lr", -1], "lr: must be a positive finite learning rate, got -1.0"),
    (
        ["profile", "-o", "p.json", "--devices", 2, "--blocks", 10**9],
        "blocks, dim, seq_len: 1000000000 blocks of width 64",
    ),
    (["profile", "-o", "p.json", "--devices", 2, "--dim", 10**6], "parameters; the tiny GPT has at most 50,000,000"),
    (["profile", "-o", "p.json", "--devices", 2, "--dim", 10], "dim: 10 is not a multiple of the tiny GPT's 4 heads"),
    (["profile", "-o", "p.json", "--devices", 2, "--seq-len", 10**9], "microbatch_size: 2 x 1000000000 tokens per"),
    (["profile", "-o", "p.json", "--devices", 2, "--microbatch-size", 10**9], "at most 65,536 on this machine"),
    (
        ["profile", "-o", "p.json", "--devices", 2, "--dim", 256, "--seq-len", 1024, "--microbatch-size", 64],
        "64 x 1024 tokens x width 256 x 8 blocks make 134,217,728 hidden values per microbatch",
    ),
    (["profile", "-o", "p.json", "--devices", 2, "--threads", 10**8], "threads: 100000000; this machine has"),
    (["profile", "-o", "p.json", "--devices", 2, "--repeats", 10**9], "Invalid value for '--repeats'"),
    (["profile", "-o", "p.json", "--devices", 2, "--warmup", 10**9], "Invalid value for '--warmup'"),
    (
        ["profile", "-o", "p.json", "--devices", 2, "--microbatches", 10**9],
        "microbatches: 4 stages x 1000000000 microbatches make",
    ),
    (["profile", "-o", "p.json", "--devices", 2, "--comm", "nan"], "comm: expected a finite number, got nan"),
    (["show", "ok.json", "--out", "chart.txt"], "chart.txt: picture format must be .png or .svg"),
    (["schedule", "1f1b", "-d", 2, "-m", 2, "-o", "."], ".: is a folder; give a file name"),
    (["validate", "."], ".: cannot read (Is a directory)"),
]


@pytest.mark.parametrize("args,fragment", BAD_OPTIONS, ids=[" ".join(map(str, a))[:60] for a, _ in BAD_OPTIONS])
def test_every_bad_option_is_one_error_line_with_exit_2(args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    schedule_json.save(generate("1f1b", 2, 2), tmp_path / "ok.json")
    (tmp_path / "0F0.csv").write_text("0F0,0B0\n")
    assert_error(run(*args, "-q") if args[0] == "solve" else run(*args), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0F0.csv", "ok.json"]  # nothing was written


@pytest.mark.parametrize("escaped", [False, True], ids=["plain", "with escapes"])
def test_brackets_inside_strings_are_not_nesting(escaped):
    data = json.loads(schedule_json.dumps(generate("1f1b", 2, 2)))
    data["name"] = ("\\" if escaped else "") + "[" * 100 + "{" * 100
    data["provenance"] = {"note": '"]]]' if escaped else "]]]"}
    schedule = schedule_json.loads(json.dumps(data))
    assert schedule.name == data["name"] and schedule.provenance == data["provenance"]


def test_a_problem_of_100000_devices_is_checked_in_linear_time():
    from pipesynth.core.problem import make_problem, one_f_one_b_peak

    problem = make_problem(100_000, 1)  # quadratic checks would take hours
    assert problem.stages_on(99_999) == [99_999] and one_f_one_b_peak(problem)[-1] == 1.0


def test_show_refuses_a_broken_schedule_and_force_draws_it_with_the_faults_marked(tmp_path):
    data = json.loads(schedule_json.dumps(generate("zb-h1", 2, 2)))
    data["actions"][0].append(dict(data["actions"][0][1]))  # F of stage 0 microbatch 1 twice
    data["actions"][1].pop()  # W of stage 1 microbatch 1 missing
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))
    assert_error(run("show", path), "appears twice (first at actions[0][1]) (and 1 more); --force draws it")
    forced = run("show", path, "--force", "--no-color", "--width", 40, "--out", tmp_path / "broken.png")
    assert forced.exit_code == 0, forced.output
    assert forced.stderr.splitlines() == [
        "warning: actions[0][6]: F of stage 0 microbatch 1 appears twice (first at actions[0][1])",
        "warning: missing: W of stage 1 microbatch 1 (device 1) is never run",
    ]
    device0 = next(line for line in forced.stdout.splitlines() if line.startswith("dev 0"))
    assert device0.count("!") == 2 and "! breaks a rule" in forced.stdout  # both copies of the pass
    assert (tmp_path / "broken.png").read_bytes().startswith(b"\x89PNG")
