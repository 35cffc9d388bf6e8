#!/usr/bin/env python3
"""Plants realistic one-line engine bugs, one at a time, and reports the first seed at which each unit or
simulator test fails (docs/reliability.md, "How many seeds `cargo test` runs, and why"). The default seed counts
of the seeded schedules are chosen from this table: well above the highest first failing seed.

Runs in a temporary git worktree of HEAD (HEAD's own tests first, then each bug), with a target directory of
its own, so the working tree and its builds are never touched. Usage (from ./scripts/seed-audit):
  seed_audit.py [SEEDS] [BUG...]    SEEDS: seeds per seeded schedule (default 200); BUG: names below (default all)
"""

import os
import re
import subprocess
import sys
import tempfile

# name: (file, text as it is, text with the bug, what the bug does). Each text must occur exactly once: when the
# code changes under a bug, the audit stops and says so, and the bug is planted again by hand.
BUGS = {
    "till-early": (
        "src/engine/core/exports.rs",
        "job.boundary_versions != Some(0) && super::boundaries::till_early(ctx, job)",
        "job.boundary_versions != Some(0) && !super::boundaries::till_early(ctx, job)",
        "`_till` sent 1 ms early to an exclusive source (and on time to an inclusive one)",
    ),
    "no-lag": (
        "src/planner.rs",
        "let lagged = now - settings.safety_lag;",
        "let lagged = now;",
        "the safety lag ignored at the frontier",
    ),
    "no-source-clock": (
        "src/engine/core/mod.rs",
        "self.source_now.map_or(self.now, |s| s.min(self.now))",
        "self.now",
        "the source's clock ignored (`Context::clock`)",
    ),
    "no-reload-on-conflict": (
        "src/engine/shell.rs",
        "Err(TableError::Conflict { .. } | TableError::AlreadyExists { .. }) => {\n                *snapshot = self.ports.load().await?;",
        "Err(TableError::Conflict { .. } | TableError::AlreadyExists { .. }) => {",
        "a shell that goes on after a write conflict without reloading",
    ),
    "part-commit": (
        "src/engine/core/plan.rs",
        "} else if let Some(window_till) = per_type_window_complete(snapshot, job) {",
        "} else if let Some(window_till) = job.window_till {",
        "a per-type part commit moving the cursor to the window's end",
    ),
    "no-reload-after-claim": (
        "src/engine/core/imports.rs",
        "None if !facts.marks.contains(&Mark::Reloaded(key)) => {",
        "None if false => {",
        "no reload after a POST claim",
    ),
    "ledger-keeps-entry": (
        "src/engine/failures/record.rs",
        "Some(old) if old.error_file == fresh.error_file => return Ok(old.clone()),",
        "Some(old) if old.error_file == fresh.error_file || old.attempts > 0 => return Ok(old.clone()),",
        "a ledger that keeps the stored entry when the version fails again in a new error file",
    ),
    "retry-always-imported": (
        "src/engine/failures/retry.rs",
        "let there = match &line {",
        "let there = true || match &line {",
        "a settled retry always taken as imported",
    ),
}


def run(cmd, cwd, env=None, timeout=None):
    return subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)


def first_failures(output):
    """{test: first failing seed or '-'} from cargo test's output. A scenario run on one fixed seed names that
    seed in its message too: read such a figure as "caught", not as a first failing seed."""
    failed = {}
    for m in re.finditer(r"^---- (\S+) stdout ----\n(.*?)(?=^---- |^failures:$)", output, re.M | re.S):
        seed = re.search(r"seed (\d+)", m.group(2))
        failed[m.group(1)] = seed.group(1) if seed else "-"
    return failed


def test_run(tree, env):
    """The library's tests in `tree`: {failing test: seed}, or exits saying why there is no verdict."""
    cmd = ["cargo", "test", "--features", "fail-points", "--lib", "--", "--test-threads", "2"]
    try:
        out = run(cmd, tree, env, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return None
    if "test result:" not in out.stdout:
        sys.exit(f"no test verdict (a build failure?):\n{out.stderr[-3000:]}")
    return first_failures(out.stdout)


# Seconds one run may take before it counts as a livelock (a schedule whose ticks never end).
TIMEOUT = 3 * 3600


def main():
    args = sys.argv[1:]
    seeds = args.pop(0) if args and args[0].isdigit() else "200"
    names = args or list(BUGS)
    unknown = [n for n in names if n not in BUGS]
    if unknown:
        sys.exit(f"unknown bug(s) {unknown}; known: {', '.join(BUGS)}")
    root = run(["git", "rev-parse", "--show-toplevel"], ".").stdout.strip()
    # A target directory of its own: builds of the planted bugs never meet the working tree's.
    target = os.path.join(root, "target", "seed-audit")
    with tempfile.TemporaryDirectory(prefix="seed-audit-") as tmp:
        tree = os.path.join(tmp, "tree")
        subprocess.run(["git", "worktree", "add", "--detach", "-q", tree, "HEAD"], cwd=root, check=True)
        try:
            env = dict(os.environ, FHIRMIG_SIM_SEEDS=seeds, CARGO_TARGET_DIR=target)
            # HEAD itself first: a test failing without a planted bug says nothing about the bugs.
            already = test_run(tree, env)
            if already is None or already:
                sys.exit(f"HEAD does not pass its own tests at {seeds} seeds: {already or 'timed out'}")
            for name in names:
                path, before, after, what = BUGS[name]
                file = os.path.join(tree, path)
                text = open(file).read()
                if text.count(before) != 1:
                    sys.exit(f"{name}: `{before}` is not in {path} exactly once; plant the bug again by hand")
                open(file, "w").write(text.replace(before, after))
                failed = test_run(tree, env)
                open(file, "w").write(text)
                print(f"## {name}: {what} ({path})")
                if failed is None:
                    print(f"   the tests did not end within {TIMEOUT} s (a livelock: caught)")
                elif not failed:
                    print(f"   NOT CAUGHT in {seeds} seeds")
                for test, seed in sorted((failed or {}).items()):
                    print(f"   {test}: first failing seed {seed}")
                sys.stdout.flush()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=root)


if __name__ == "__main__":
    main()
