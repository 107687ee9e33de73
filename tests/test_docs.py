"""The README and the pages under docs/ hold only links that resolve and commands that parse.

Links: every relative link and image of README.md and docs/**/*.md points at a file of the
checkout, and every ``#anchor`` at a heading of its page, by GitHub's rule (lowercase, punctuation
other than '-' and '_' dropped, spaces to '-', '-1', '-2', ... for repeated headings).

Commands: every ``nnunet-peft ...`` line in a code block is parsed by the command line's own
argparse parser (``nnunet_peft.cli.build_parser``), shell variables replaced by a dummy value, and
so are the documented scripts' command lines by their parsers. An ``nnunet-peft ...`` command in
inline code (often elided with ``...``) must name a subcommand and only options that subcommand has.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import re
import shlex
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
# scripts whose command lines the docs quote, and how to parse one: name -> function name ("parser": calls
# parser()), or "module:function" for a thin script whose parser lives in the package
SCRIPT_PARSERS = {"benchmark_adapters": "nnunet_peft.benchmarks.adapter_step:parse_args",
                  "multiview_demo": "parse_args", "lpba40_transfer": "parser"}

FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ------------------------------------------------------------------ reading markdown

def split_code(text: str) -> tuple[list[str], list[str]]:
    """(prose lines, code blocks): fenced blocks and indented (4 spaces after a blank line) blocks."""
    prose: list[str] = []
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    previous_blank = True
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line.lstrip()):
            fence, info = line.lstrip()[:3], line.lstrip()[3:].strip()
            body = []
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith(fence):
                body.append(lines[i])
                i += 1
            if info != "text":  # ```text: what a command prints, not commands
                blocks.append("\n".join(body))
            i += 1
            previous_blank = False
            continue
        if previous_blank and line.startswith("    ") and line.strip():
            body = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            blocks.append("\n".join(body).rstrip())
            previous_blank = True
            continue
        prose.append(line)
        previous_blank = not line.strip()
        i += 1
    return prose, blocks


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: markup and punctuation dropped (but '-' and '_'), spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose, _ = split_code(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    result = set()
    for line in prose:
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = github_anchor(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path: Path) -> list[str]:
    prose, _ = split_code(path.read_text(encoding="utf-8"))
    text = "\n".join(prose)
    text = INLINE_CODE.sub("", text)
    return LINK.findall(text)


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = path if not file_part else (path.parent / file_part).resolve()
        if not linked.exists():
            problems.append(f"{rel(path)}: link {target!r}: {file_part} does not exist")
            continue
        if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{rel(path)}: link {target!r}: {rel(linked)} has no heading with anchor #{anchor}")
    return problems


# ------------------------------------------------------------------ commands

def substitute_shell(command: str) -> str:
    """Shell variables and command substitutions replaced by a value every option type takes."""
    command = re.sub(r"\$\([^()]*\)", "1", command)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", "1", command)


def shell_segments(block: str) -> list[list[str]]:
    """The simple commands of a code block as word lists, comments, operators and line continuations removed."""
    joined = re.sub(r"\\\n\s*", " ", block)
    segments = []
    for line in joined.splitlines():
        if "nnunet-peft" not in line and "scripts/" not in line:
            continue  # not a command this test reads (output, Python, a grammar)
        lexer = shlex.shlex(substitute_shell(line), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:  # a line that is not shell (an unclosed quote) fails here, as it would in bash
            if token and set(token) <= set("();<>|&"):
                segments.append(current)
                current = []
            else:
                current.append(token)
        segments.append(current)
    return [s for s in segments if s]


def invocations(words: list[str], program: str) -> list[list[str]]:
    """The arguments after each occurrence of ``program`` (nested ones, as in ``$(...)``, come separately)."""
    return [words[i + 1:] for i, word in enumerate(words) if word == program]


def unwrap_optional(args: list[str]) -> list[str]:
    """``[--no-memory]`` in a quoted command marks an optional argument: take it."""
    return [a[1:-1] if a.startswith("[") and a.endswith("]") else a for a in args]


@lru_cache(maxsize=None)
def cli_parser() -> argparse.ArgumentParser:
    from nnunet_peft.cli import build_parser

    return build_parser()


def parse_error(parse, args: list[str]) -> str | None:
    """None when ``parse(args)`` accepts them, else what argparse printed."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parse(args)
    except SystemExit as e:
        if e.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e.code}"
    return None


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


def code_commands(page: Path) -> list[list[str]]:
    _, blocks = split_code(page.read_text(encoding="utf-8"))
    found = []
    for block in blocks:
        # a command substitution is checked as a command of its own before it is replaced by a value
        nested = [m.group(1) for m in re.finditer(r"\$\(([^()]*)\)", block)]
        for words in [w for b in (block, *nested) for w in shell_segments(b)]:
            found += invocations(words, "nnunet-peft")
    return found


def script_commands(page: Path) -> list[tuple[str, list[str]]]:
    _, blocks = split_code(page.read_text(encoding="utf-8"))
    found = []
    for block in blocks:
        for words in shell_segments(block):
            for i, word in enumerate(words[:-1]):
                if word == "python" and words[i + 1].startswith("scripts/"):
                    found.append((words[i + 1], unwrap_optional(words[i + 2:])))
    return found


def inline_commands(page: Path) -> list[str]:
    prose, _ = split_code(page.read_text(encoding="utf-8"))
    text = " ".join(prose)  # an inline code span may wrap onto the next line
    return [m.group(2).strip() for m in INLINE_CODE.finditer(text) if m.group(2).strip().startswith("nnunet-peft ")]


@lru_cache(maxsize=None)
def script_parse(script: str):
    name = Path(script).stem
    if ":" in SCRIPT_PARSERS[name]:
        module, function = SCRIPT_PARSERS[name].split(":")
        return getattr(importlib.import_module(module), function)
    spec = importlib.util.spec_from_file_location(f"docs_script_{name}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    if SCRIPT_PARSERS[name] == "parser":
        return lambda args: module.parser().parse_args(args)
    return getattr(module, SCRIPT_PARSERS[name])


# ------------------------------------------------------------------ tests

def test_the_pages_are_found():
    names = {rel(p) for p in PAGES}
    assert {"README.md", "docs/METHODS.md", "docs/trainer_names.md", "docs/results/lpba40.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_a_broken_link_or_anchor_is_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Starting from a `checkpoint`: classes, channels\n")
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Two words\n\n"
                    "[ok](other.md#starting-from-a-checkpoint-classes-channels) [ok](#two-words) [ok](other.md)\n"
                    "[bad anchor](other.md#starting-from-a-checkpoint) [no file](missing.md) ![no image](fig.png)\n"
                    "[bad local](#title-two)\n\n    [in code](nowhere.md)\n\n`[in inline code](nowhere.md)`\n")
    problems = broken_links(page.resolve())
    assert len(problems) == 4, problems
    assert any("#starting-from-a-checkpoint" in p for p in problems)
    assert any("missing.md does not exist" in p for p in problems)
    assert any("fig.png does not exist" in p for p in problems)
    assert any("#title-two" in p for p in problems)


def test_github_anchor_rule():
    assert github_anchor("Inside nnU-Net's trainer") == "inside-nnu-nets-trainer"
    assert github_anchor("`auto`: the fastest mode per layer shape") == "auto-the-fastest-mode-per-layer-shape"
    assert github_anchor("4. The DoRA variants: DoRA-C, convDoRA") == "4-the-dora-variants-dora-c-convdora"
    assert github_anchor("The Multiview network (SAH laboratory)") == "the-multiview-network-sah-laboratory"
    assert github_anchor("Using `train_fully`") == "using-train_fully"


def test_the_docs_quote_nnunet_peft_commands():
    assert sum(len(code_commands(p)) for p in PAGES) >= 20


@pytest.mark.parametrize("page", [p for p in PAGES if code_commands(p)], ids=rel)
def test_every_quoted_nnunet_peft_command_parses(page):
    problems = [f"nnunet-peft {' '.join(args)}: {error}" for args in code_commands(page)
                if (error := parse_error(cli_parser().parse_args, args))]
    assert problems == []


def test_a_command_with_a_wrong_option_is_reported():
    block = 'nnunet-peft plan-from-checkpoint -d $ID --checkpont "$CKPT"\nexport X=$(nnunet-peft trainer-dirs)\n'
    commands = [w for words in shell_segments(block) for w in invocations(words, "nnunet-peft")]
    assert commands == [["plan-from-checkpoint", "-d", "1", "--checkpont", "1"]]
    assert "--checkpont" in parse_error(cli_parser().parse_args, commands[0])
    nested = [w for words in shell_segments("nnunet-peft trainer-dirs") for w in invocations(words, "nnunet-peft")]
    assert "trainer-dirs" in parse_error(cli_parser().parse_args, nested[0])


@pytest.mark.parametrize("page", [p for p in PAGES if script_commands(p)], ids=rel)
def test_every_quoted_script_command_parses(page, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a --device cuda command is checked here too
    problems = []
    for script, args in script_commands(page):
        if not (ROOT / script).is_file():
            problems.append(f"{script} does not exist")
        elif Path(script).stem in SCRIPT_PARSERS and (error := parse_error(script_parse(script), args)):
            problems.append(f"python {script} {' '.join(args)}: {error}")
    assert problems == []


@pytest.mark.parametrize("page", [p for p in PAGES if inline_commands(p)], ids=rel)
def test_every_inline_nnunet_peft_command_names_a_subcommand_and_its_options(page):
    problems = []
    commands = subparsers(cli_parser())
    for command in inline_commands(page):
        words = command.split()
        sub = commands.get(words[1])
        if sub is None:
            problems.append(f"`{command}`: no subcommand {words[1]!r}")
            continue
        options = option_strings(sub)
        nested = subparsers(sub)
        if len(words) > 2 and words[2] in nested:  # convert FORMAT: that format's options
            options |= option_strings(nested[words[2]])
        elif nested:  # a placeholder for the format: any format's options
            options |= {o for p in nested.values() for o in option_strings(p)}
        problems += [f"`{command}`: {words[1]} has no option {w}" for w in words[2:]
                     if re.fullmatch(r"--?[A-Za-z][\w-]*", w) and w not in options]
    assert problems == []
