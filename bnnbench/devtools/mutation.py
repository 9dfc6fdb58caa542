"""Mutation check of the method math (issue 10, "Proof"): which code changes do the fast tests miss?

Runs mutmut 3 (``pip install mutmut``; configured in pyproject's ``[tool.mutmut]``: what is
mutated, which fast tests run) and writes ``reports/mutation.md``: the commit, date, tool version
and test command, the count of mutants per file and status, and every surviving mutant with a
one-line diff. Not run by CI: a full run is long (a few thousand mutants), so the run is
time-boxed (``--budget-min``) and resumable: mutmut keeps each mutant's result under
``mutants/`` and a later run continues with the unchecked ones (fastest first).

    python -m bnnbench.devtools.mutation --out reports/mutation.md            # run, then report
    python -m bnnbench.devtools.mutation --recheck-survivors                  # after adding tests
    python -m bnnbench.devtools.mutation --report-only                        # no run
    python -m bnnbench.devtools.mutation --scope modern                       # one scope

``--scope NAME`` runs a smaller check: ``[tool.bnnbench.mutation_scopes.NAME]`` in pyproject
names the files to mutate and the tests to run (its keys replace ``[tool.mutmut]``'s), mutmut
works in ``mutants-NAME/`` (links to the checkout and that scope's pyproject), and the report is
``reports/mutation_NAME.md``, so the whole-code report and its mutmut state stay as they are.

``--recheck-survivors`` reruns only the mutants that survived before (a new test can kill a
survivor; it cannot revive a killed mutant), and the report then shows both counts, before and
after. mutmut's state then holds results for the rechecked names only; the others keep the
status the state file (``reports/mutation*.json``) recorded for them, as long as their source
file is unchanged (same sha256). ``--fresh`` deletes ``mutants/`` first (needed after the
mutated sources change).
mutmut forks one worker per mutant from a process that already imported torch, so torch's
thread pools are limited to one thread (``OMP_NUM_THREADS=1``) to keep forks safe.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from bnnbench.errors import BnnbenchError, call_or_exit
from bnnbench.files import write_atomic

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = ROOT / "mutants"
# a scope's mutmut runs in ROOT / mutants-NAME, which links these paths of the checkout
SCOPE_LINKS = ("bnnbench", "tests", "conf", "kernels")

# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code), grouped for the report.
STATUS_BY_EXIT_CODE: dict[int | None, str] = {
    1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
    35: "suspicious", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout",
    255: "timeout", -11: "segfault", -9: "killed (memory)", 37: "caught by type check",
    None: "not checked",
}
STATUSES = ("killed", "survived", "no tests", "timeout", "suspicious", "segfault",
            "killed (memory)", "skipped", "caught by type check", "not checked")


# Survivors that change no behaviour the tests could observe, with the reason (reviewed by hand;
# keys are mutmut's names within their module). They stay listed, marked, not hidden.
_UNIFORM = "u ~ U[0, 1) compares the same with p unclipped on that side"
_CPU_RAND = "torch.rand's defaults (CPU, float32) on CPU tensors; the comparison u < p promotes"
_ONE_BIT = "every quantized layer BinaryConnect makes has 1-bit weights"
_TWO_D = "logits are (N, C): dim 1 is dim -1"
_FALSY = "None and False are both falsy"
_NO_RUNNING = "track_running_stats=False is exactly when running_mean is None"
_MOMENTUM_NONE = ("only momentum=None reaches it (see the note on torch's cumulative average "
                  "in the report's findings)")
EQUIVALENT: dict[str, str] = {
    "xǁ_StochasticSignǁforward__mutmut_4": _UNIFORM,
    "xǁ_StochasticSignǁforward__mutmut_5": _UNIFORM,
    "xǁ_StochasticSignǁforward__mutmut_7": _UNIFORM,
    "xǁ_StochasticSignǁforward__mutmut_13": _UNIFORM,
    "xǁ_StochasticSignǁforward__mutmut_17": _CPU_RAND,
    "xǁ_StochasticSignǁforward__mutmut_18": _CPU_RAND,
    "xǁ_StochasticSignǁforward__mutmut_21": _CPU_RAND,
    "xǁ_StochasticSignǁforward__mutmut_22": _CPU_RAND,
    "xǁ_StochasticSignǁforward__mutmut_29": "u = p has probability 0",
    "xǁ_StochasticSignǁbackward__mutmut_6": "a bool mask multiplies g the same as a float one",
    "xǁ_GradQuantMixinǁ__init____mutmut_1": "grad_bits 32 and 33 are both full precision",
    "xǁDoReFaǁconvert__mutmut_54": "nn.Hardtanh's max_val defaults to 1.0",
    "x_glorot_param_groups__mutmut_3": _ONE_BIT,
    "x_glorot_param_groups__mutmut_4": _ONE_BIT,
    "xǁBinaryConnectǁconvert__mutmut_19": _FALSY,
    "xǁBinaryConnectǁ__init____mutmut_16": _FALSY,
    "xǁShiftAdamaxǁ__init____mutmut_7": _FALSY,
    "x_glorot_lr_scale__mutmut_6": "in_channels is a multiple of groups: / and // agree",
    "x_topk_correct__mutmut_7": _TWO_D,
    "x_topk_correct__mutmut_13": "topk's default dim is -1",
    "x_topk_correct__mutmut_14": _TWO_D,
    "x_topk_correct__mutmut_19": "target is 1-D: unsqueeze(1) is unsqueeze(-1)",
    "x_topk_correct__mutmut_26": _TWO_D,
    "x_squared_hinge_loss__mutmut_4": "int t promotes to the logits' dtype in 1 - t * y",
    "x_squared_hinge_loss__mutmut_9": _TWO_D,
    "xǁBNNModuleǁconfigure_optimizers__mutmut_6": "torch optimizers keep unknown group keys",
    "xǁBNNModuleǁconfigure_optimizers__mutmut_7": "torch optimizers keep unknown group keys",
    "xǁShiftBatchNormǁforward__mutmut_21": _NO_RUNNING,
    "xǁShiftBatchNormǁforward__mutmut_34": _NO_RUNNING,
    "xǁShiftBatchNormǁforward__mutmut_41": _MOMENTUM_NONE,
    "xǁShiftBatchNormǁforward__mutmut_43": _MOMENTUM_NONE,
    "x_register_method__mutmut_1": "runs at import, before mutmut switches a mutant on",
    "x_register_method__mutmut_2": "runs at import, before mutmut switches a mutant on",
    # --scope modern
    "x_unit_shortcut__mutmut_17": "k is odd there: (k - 1) / 2 equals the integer (k - 1) // 2",
    "x_unit_shortcut__mutmut_37": "stride[0] == stride[1] is checked the line before",
    "x_unit_shortcut__mutmut_43": "AvgPool2d's stride defaults to its kernel size",
    "x_unit_shortcut__mutmut_45": "AvgPool2d's stride defaults to its kernel size",
    "x_unit_shortcut__mutmut_46": "AvgPool2d's stride defaults to its kernel size",
    "xǁ_MagnitudeSignǁbackward__mutmut_4": "a bool mask multiplies g the same as a float one",
    "xǁ_MagnitudeSignǁbackward__mutmut_8": "a bool mask multiplies g the same as a float one",
}


def mutmut_config(scope: str | None = None) -> dict[str, Any]:
    """pyproject's ``[tool.mutmut]``, with ``[tool.bnnbench.mutation_scopes.<scope>]``'s keys
    in place of its own for a scoped run."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {})
    if "mutmut" not in tool:
        raise BnnbenchError("pyproject.toml has no [tool.mutmut] section; add it "
                            "(see the one in the bnnbench repository)")
    if scope is None:
        return tool["mutmut"]
    scopes = tool.get("bnnbench", {}).get("mutation_scopes", {})
    if scope not in scopes:
        raise BnnbenchError(f"--scope={scope!r} is not defined; pyproject.toml's "
                            f"[tool.bnnbench.mutation_scopes] has: {', '.join(scopes) or 'none'}")
    return {**tool["mutmut"], **scopes[scope]}


def _toml_value(value: Any) -> str:
    # JSON's strings, lists and numbers are TOML's; only the booleans are spelled differently
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def scope_workdir(scope: str, config: dict[str, Any]) -> Path:
    """``ROOT / mutants-<scope>``: links to the checkout's sources, tests, configs and kernels
    and a pyproject.toml holding the scope's ``[tool.mutmut]`` and the checkout's pytest
    settings (markers, addopts), where mutmut runs and keeps its ``mutants/``."""
    work = ROOT / f"mutants-{scope}"
    work.mkdir(exist_ok=True)
    for name in SCOPE_LINKS:
        link = work / name
        if not link.is_symlink():
            link.symlink_to(ROOT / name, target_is_directory=True)
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"].get(
        "pytest", {}).get("ini_options", {})
    lines = ["# written by python -m bnnbench.devtools.mutation --scope " + scope, ""]
    for table, values in (("tool.pytest.ini_options", pytest_options), ("tool.mutmut", config)):
        lines += [f"[{table}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items()), ""]
    write_atomic(work / "pyproject.toml", "\n".join(lines))
    return work


def mutmut_version() -> str:
    try:
        return metadata.version("mutmut")
    except metadata.PackageNotFoundError:
        raise BnnbenchError("mutmut is not installed; run `pip install mutmut` (>= 3.8)") from None


def test_command(config: dict[str, Any]) -> str:
    args = [*config.get("pytest_add_cli_args_test_selection", []),
            *config.get("pytest_add_cli_args", [])]
    quoted = [a if a and " " not in a else f'"{a}"' for a in args]
    return "python -m pytest -x " + " ".join(quoted)


def run_mutmut(names: list[str], max_children: int, budget_s: float,
               work: Path = ROOT) -> tuple[int | None, float]:
    """Run ``mutmut run`` (all mutants, or ``names``) in ``work`` for at most ``budget_s``;
    returns (exit status or None when stopped at the budget, seconds)."""
    path = os.pathsep.join([str(work), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=path)
    (work / "mutants").mkdir(exist_ok=True)
    log = work / "mutants" / "mutmut-run.log"
    # the console script, not `python -m mutmut`: mutmut's module must not run twice (its GH-466)
    script = Path(sys.executable).with_name("mutmut")
    executable = str(script) if script.is_file() else shutil.which("mutmut") or "mutmut"
    command = [executable, "run", "--max-children", str(max_children), *names]
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            status: int | None = proc.wait(timeout=budget_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)  # mutmut stops its workers and saves on SIGINT
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            status = None
    return status, time.monotonic() - start


def collect(mutants: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every mutant mutmut generated: ``{name: {"file", "status"}}``, from ``mutants/**/*.meta``
    (``mutants``: that directory, default the whole-code run's)."""
    mutants = mutants or MUTANTS
    result: dict[str, dict[str, Any]] = {}
    for meta in sorted(mutants.rglob("*.py.meta")):
        source = meta.relative_to(mutants).with_suffix("").as_posix()
        data = json.loads(meta.read_text())
        for name, code in data.get("exit_code_by_key", {}).items():
            result[name] = {"file": source,
                            "status": STATUS_BY_EXIT_CODE.get(code, "suspicious")}
    return result


def source_digest(path: Path) -> str:
    """sha256 of a mutated source file: a mutant's name means the same change only while its
    source is byte-for-byte the one that was mutated."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def carry_statuses(mutants: dict[str, dict[str, Any]], earlier: dict[str, dict[str, str]],
                   work: Path) -> int:
    """Give each mutant this run did not check ("not checked": a recheck runs only some names,
    and mutmut's state then holds no result for the others) the status an earlier run recorded
    for it, when its source file is unchanged since (same sha256); returns how many."""
    digests: dict[str, str] = {}
    carried = 0
    for name, info in mutants.items():
        before = earlier.get(name)
        if info["status"] != "not checked" or before is None:
            continue
        digest = digests.setdefault(info["file"], source_digest(work / info["file"]))
        if digest and before.get("sha256") == digest:
            info["status"] = before["status"]
            carried += 1
    return carried


def checked_statuses(mutants: dict[str, dict[str, Any]], work: Path) -> dict[str, dict[str, str]]:
    """What the state file keeps of every checked mutant: its status and its source's sha256."""
    digests: dict[str, str] = {}
    return {name: {"status": info["status"],
                   "sha256": digests.setdefault(info["file"],
                                                source_digest(work / info["file"]))}
            for name, info in mutants.items() if info["status"] != "not checked"}


def one_line_diff(name: str, source: str, work: Path = ROOT) -> str:
    """``old`` -> ``new`` of the changed line (mutmut's diff reduced to its first -/+ pair)."""
    old_cwd = os.getcwd()
    os.chdir(work)  # mutmut reads its config from the working directory
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        diff = get_diff_for_mutant(name, path=source)  # relative: mutmut's line index is used
    except Exception as err:  # a broken index must not lose the rest of the report
        return f"(no diff: {type(err).__name__})"
    finally:
        os.chdir(old_cwd)
    removed = [line[1:].strip() for line in diff.splitlines()
               if line.startswith("-") and not line.startswith("---")]
    added = [line[1:].strip() for line in diff.splitlines()
             if line.startswith("+") and not line.startswith("+++")]
    old = removed[0] if removed else ""
    new = added[0] if added else "(line removed)"
    return f"`{old}` -> `{new}`".replace("|", "\\|")


def counts_by_file(mutants: dict[str, dict[str, Any]]) -> dict[str, Counter]:
    table: dict[str, Counter] = {}
    for info in mutants.values():
        table.setdefault(info["file"], Counter())[info["status"]] += 1
    return dict(sorted(table.items()))


def render(mutants: dict[str, dict[str, Any]], before: dict[str, int] | None,
           config: dict[str, Any], run_notes: list[str], scope: str | None = None) -> str:
    from bnnbench.record import git_commit

    table = counts_by_file(mutants)
    used = [s for s in STATUSES if any(c[s] for c in table.values())]
    lines = [
        "# Mutation check",
        "",
        "Generated by `python -m bnnbench.devtools.mutation` (issue 10, \"Proof\"); not run by CI.",
        "A mutant is one small change to the code (an operator swapped, a constant changed, a "
        "call's argument dropped, a statement removed); a test run that still passes lets it "
        "*survive*: nothing in the fast tests depends on that piece of behaviour.",
        "",
        f"- commit: `{git_commit(ROOT)}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- tool: mutmut {mutmut_version()}, Python {sys.version.split()[0]}",
        *([f"- scope: `{scope}` (`--scope {scope}`: pyproject's "
           f"`[tool.bnnbench.mutation_scopes.{scope}]`)"] if scope else []),
        f"- mutated: {', '.join(f'`{p}`' for p in config.get('only_mutate', []))}",
        f"- tests (each mutant runs only the tests that call its function): "
        f"`{test_command(config)}`",
        *[f"- {note}" for note in run_notes],
        "",
        "## Mutants per file",
        "",
        "| file | " + " | ".join(used) + " | total |",
        "|---|" + "---:|" * (len(used) + 1),
    ]
    total = Counter()
    for source, counter in table.items():
        total.update(counter)
        lines.append(f"| `{source}` | " + " | ".join(str(counter[s]) for s in used)
                     + f" | {sum(counter.values())} |")
    lines.append("| **all** | " + " | ".join(f"**{total[s]}**" for s in used)
                 + f" | **{sum(total.values())}** |")
    if before is not None:
        lines += ["", "## Before and after the new tests", "",
                  "Mutants the first run did not kill (survived, or no fast test called their "
                  "function), rerun with the tests added since "
                  "(`tests/test_mutation_killers*.py`).", "",
                  "| file | not killed before | survived after | no tests after |",
                  "|---|---:|---:|---:|"]
        for source in sorted(set(before) | set(table)):
            after = table.get(source, Counter())
            if before.get(source, 0) or after["survived"] or after["no tests"]:
                lines.append(f"| `{source}` | {before.get(source, 0)} | {after['survived']} | "
                             f"{after['no tests']} |")
        lines.append(f"| **all** | **{sum(before.values())}** | **{total['survived']}** | "
                     f"**{total['no tests']}** |")
    survivors = [(n, i) for n, i in sorted(mutants.items()) if i["status"] == "survived"]
    lines += ["", f"## Surviving mutants ({len(survivors)})", "",
              "`mutmut show <name>` prints the full diff; `mutmut apply <name>` writes it into "
              "the source (revert afterwards).", ""]
    current = None
    for name, info in survivors:
        if info["file"] != current:
            current = info["file"]
            lines += ["", f"### `{current}`", ""]
        module = current.removesuffix(".py").replace("/", ".") + "."
        why = EQUIVALENT.get(name.removeprefix(module))
        lines.append(f"- `{name.removeprefix(module)}`: "
                     f"{info.get('diff') or one_line_diff(name, current)}"
                     + (f" -- *equivalent: {why}*" if why else ""))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bnnbench.devtools.mutation",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None,
                        help="the report (default reports/mutation.md, with --scope NAME "
                             "reports/mutation_NAME.md); its state is beside it (.json)")
    parser.add_argument("--scope", default=None, metavar="NAME",
                        help="a smaller check defined in pyproject's "
                             "[tool.bnnbench.mutation_scopes.NAME]")
    parser.add_argument("--max-children", type=int, default=2,
                        help="mutants tested in parallel (default 2)")
    parser.add_argument("--budget-min", type=float, default=40.0,
                        help="stop mutmut after this many minutes; rerun to continue")
    parser.add_argument("--fresh", action="store_true",
                        help="delete mutants/ first (after the mutated sources changed)")
    parser.add_argument("--recheck-survivors", action="store_true",
                        help="rerun only the survivors of the last report's run")
    parser.add_argument("--report-only", action="store_true", help="write the report, run nothing")
    parser.add_argument("--note", action="append", default=[],
                        help="a line for the report's header (e.g. how busy the machine was)")
    parser.add_argument("--only", nargs="+", default=[], metavar="GLOB",
                        help="test only these mutants, e.g. 'bnnbench.methods.*' (fnmatch on "
                             "mutmut's names: module.x_function / module.xǁClassǁmethod)")
    args = parser.parse_args(argv)
    return call_or_exit(_main, args)


def _main(args: argparse.Namespace) -> int:
    config = mutmut_config(args.scope)
    mutmut_version()
    if args.max_children < 1:
        raise BnnbenchError(f"--max-children={args.max_children} is out of range: need >= 1")
    if args.out is None:
        args.out = ROOT / "reports" / (f"mutation_{args.scope}.md" if args.scope
                                       else "mutation.md")
    work = ROOT if args.scope is None else scope_workdir(args.scope, config)
    mutants_dir = work / "mutants"
    state_path = args.out.with_suffix(".json")  # every mutant's status, for before/after
    previous = json.loads(state_path.read_text()) if state_path.is_file() else None
    before: dict[str, int] | None = None
    if args.fresh:
        previous = None
        if mutants_dir.exists():
            shutil.rmtree(mutants_dir)
    notes: list[str] = previous.get("notes", []) if previous is not None else []
    if args.report_only:
        if previous is not None:
            before = previous.get("survived_before")
    else:
        names: list[str] = list(args.only)
        if args.recheck_survivors:
            if previous is None:
                raise BnnbenchError(f"--recheck-survivors needs {state_path} from an earlier run; "
                                    "run without it first")
            # survivors, and mutants no fast test reached (a new test may reach them)
            missed = {**previous["survivors"], **previous.get("uncovered", {})}
            names = sorted(missed) + list(args.only)  # --only adds mutants not checked yet
            before = previous.get("survived_before") or dict(Counter(
                info["file"] for info in missed.values()))
        if not args.recheck_survivors or names:
            status, seconds = run_mutmut(names, args.max_children, args.budget_min * 60, work)
            stopped = " (stopped at the budget; rerun to continue)" if status is None else ""
            what = (f"{len(names) - len(args.only)} survivors and unreached mutants rechecked"
                    + (f", plus {' '.join(args.only)}" if args.only else "")
                    if args.recheck_survivors else
                    f"mutmut run {' '.join(names)}" if names else "mutmut run")
            notes.append(f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC: {what}, "
                         f"{seconds / 60:.1f} min with {args.max_children} workers{stopped}; "
                         f"mutmut exit status {status}")
    notes += args.note
    mutants = collect(mutants_dir)
    if not mutants:
        raise BnnbenchError(f"no mutmut results under {mutants_dir}; run without --report-only "
                            "first")
    carried = carry_statuses(mutants, (previous or {}).get("statuses", {}), work)
    if carried:
        print(f"{carried} mutants not checked by this run keep an earlier run's status "
              "(their source unchanged)")
    survivors = {name: info for name, info in mutants.items() if info["status"] == "survived"}
    for name, info in survivors.items():
        info["diff"] = one_line_diff(name, info["file"], work)
    write_atomic(args.out, render(mutants, before, config, notes, args.scope))
    counts = {source: dict(counter) for source, counter in counts_by_file(mutants).items()}
    uncovered = {name: {"file": info["file"]} for name, info in mutants.items()
                 if info["status"] == "no tests"}
    write_atomic(state_path, json.dumps({"counts": counts, "survivors": survivors,
                                         "uncovered": uncovered,
                                         "statuses": checked_statuses(mutants, work),
                                         "survived_before": before, "notes": notes},
                                        indent=1, sort_keys=True) + "\n")
    print(f"{len(survivors)} surviving mutants of {len(mutants)}; report: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
