"""The genotype: the hand-off between a search and everything after it.

A genotype is a small, versioned JSON document that names the space, the macro choices, each cell's
nodes with their operations and inputs, the fusion settings and metadata (strategy, seed, cost,
metrics). It converts to and from NNI's flat architecture dict and reads DARTS-style
``Genotype(normal=[...], ...)`` text, so published genotypes can be rendered and compared.

Node numbering follows DARTS everywhere: in a cell with ``n_inputs`` inputs, numbers
``0 .. n_inputs-1`` are the cell inputs (``c_{k-2}``, ``c_{k-1}``) and ``n_inputs + i`` is
intermediate node ``i``. NNI's ``Cell`` uses the same numbering in its labels
(``<cell>/op_<node>_<slot>``, ``<cell>/input_<node>_<slot>``).
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from nas_restore.errors import UserError, did_you_mean

FORMAT_NAME = "nas-restore-genotype"
FORMAT_VERSION = 1
CELL_KINDS = ("dag", "chain")
# Bounds on what a genotype file may ask for, far above any real architecture (DARTS cells have 4 nodes of
# 2 edges; TMICS's released cells 3 ops): a hostile or corrupt file gets a clear error, not an allocation
# without bound. A space's own limits (channels, frames, ...) are checked by its config.
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_CELLS = 64
MAX_NODES = 64
MAX_EDGES_PER_NODE = 16
MAX_N_INPUTS = 8


class GenotypeError(UserError, ValueError):
    """A genotype that cannot be read or does not fit its space; the message names the field."""


@dataclass(frozen=True)
class Edge:
    """One operation applied to one input of a node."""

    op: str
    input: int


@dataclass
class CellGenotype:
    """One searched cell.

    ``kind="dag"``: DARTS-style, each intermediate node sums its incoming edges.
    ``kind="chain"``: TMICS's released cells, the operations applied in sequence plus the cell input;
    ``nodes`` then holds a single list with the operations in order (their ``input`` is ignored).
    """

    nodes: list[list[Edge]]
    concat: list[int] = field(default_factory=list)
    kind: str = "dag"
    n_inputs: int = 2

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def ops(self) -> list[str]:
        return [edge.op for node in self.nodes for edge in node]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n_inputs": self.n_inputs,
            "nodes": [[{"op": e.op, "input": e.input} for e in node] for node in self.nodes],
            "concat": list(self.concat),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "cell") -> "CellGenotype":
        _require_keys(data, ("nodes",), where)
        kind = data.get("kind", "dag")
        if kind not in CELL_KINDS:
            raise GenotypeError(f"{where}.kind is {kind!r}; allowed values: {', '.join(CELL_KINDS)}")
        nodes_raw = data["nodes"]
        if not isinstance(nodes_raw, list) or not nodes_raw:
            raise GenotypeError(f"{where}.nodes must be a non-empty list of nodes (each a list of edges)")
        if len(nodes_raw) > MAX_NODES:
            raise GenotypeError(f"{where}.nodes has {len(nodes_raw)} nodes; at most {MAX_NODES} are allowed")
        nodes: list[list[Edge]] = []
        for i, node in enumerate(nodes_raw):
            if not isinstance(node, list) or not node:
                raise GenotypeError(f"{where}.nodes[{i}] must be a non-empty list of {{'op', 'input'}} edges")
            if len(node) > MAX_EDGES_PER_NODE:
                raise GenotypeError(f"{where}.nodes[{i}] has {len(node)} edges; at most {MAX_EDGES_PER_NODE} "
                                    "are allowed")
            edges = []
            for k, e in enumerate(node):
                if not isinstance(e, dict) or "op" not in e or "input" not in e:
                    raise GenotypeError(f"{where}.nodes[{i}][{k}] must be an object with keys 'op' and 'input', got {e!r}")
                if not isinstance(e["op"], str) or not isinstance(e["input"], int) or isinstance(e["input"], bool):
                    raise GenotypeError(f"{where}.nodes[{i}][{k}]: 'op' must be a string and 'input' an integer, got {e!r}")
                edges.append(Edge(e["op"], e["input"]))
            nodes.append(edges)
        n_inputs = data.get("n_inputs", 2)
        if not isinstance(n_inputs, int) or isinstance(n_inputs, bool) or not 1 <= n_inputs <= MAX_N_INPUTS:
            raise GenotypeError(f"{where}.n_inputs must be an integer in 1..{MAX_N_INPUTS}, got {n_inputs!r}")
        concat = data.get("concat")
        if concat is None:
            concat = list(range(n_inputs, n_inputs + len(nodes))) if kind == "dag" else []
        if not isinstance(concat, list) or len(concat) > MAX_NODES + MAX_N_INPUTS:
            raise GenotypeError(f"{where}.concat must be a list of node numbers, got {str(concat)[:60]}")
        return cls(nodes=nodes, concat=list(concat), kind=kind, n_inputs=n_inputs)

    def validate(self, where: str = "cell", allowed_ops: Iterable[str] | None = None) -> None:
        """Structural checks (dangling inputs, concat range) and, optionally, the op vocabulary."""
        if self.n_inputs < 1:
            raise GenotypeError(f"{where}.n_inputs must be >= 1, got {self.n_inputs}")
        allowed = sorted(set(allowed_ops)) if allowed_ops is not None else None
        for i, node in enumerate(self.nodes):
            for k, edge in enumerate(node):
                if allowed is not None and edge.op not in allowed:
                    raise GenotypeError(
                        f"{where}.nodes[{i}][{k}].op: unknown operation {edge.op!r}; allowed: {', '.join(allowed)}"
                        + _suggest(edge.op, allowed))
                if self.kind == "dag":
                    limit = self.n_inputs + i
                    if not 0 <= edge.input < limit:
                        raise GenotypeError(
                            f"{where}.nodes[{i}][{k}].input is {edge.input}: node {i} (number {limit}) can only take "
                            f"inputs 0..{limit - 1} (cell inputs 0..{self.n_inputs - 1}, then earlier nodes): fix the input "
                            "number")
        if self.kind == "dag":
            top = self.n_inputs + self.num_nodes
            for c in self.concat:
                if not isinstance(c, int) or not 0 <= c < top:
                    raise GenotypeError(f"{where}.concat has {c!r}; node numbers run 0..{top - 1}")
            if not self.concat:
                raise GenotypeError(f"{where}.concat is empty: list the node numbers that form the cell output")


@dataclass
class Genotype:
    """A searched architecture of a named space, with the metadata of the run that found it."""

    space: str
    cells: dict[str, CellGenotype]
    macro: dict[str, str] = field(default_factory=dict)
    space_config: dict[str, Any] = field(default_factory=dict)
    fusion: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def architecture_dict(self) -> dict[str, Any]:
        """Everything that defines the network (no metadata): the basis of the id."""
        return {
            "space": self.space,
            "space_config": self.space_config,
            "macro": self.macro,
            "cells": {name: cell.to_dict() for name, cell in sorted(self.cells.items())},
            "fusion": self.fusion,
        }

    def genotype_id(self) -> str:
        """Short stable hash of the architecture, for deduplication across runs."""
        blob = json.dumps(self.architecture_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        data = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
        data.update(self.architecture_dict())
        data["metadata"] = self.metadata
        data["id"] = self.genotype_id()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, default=_json_default)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Genotype":
        if not isinstance(data, dict):
            raise GenotypeError(f"a genotype must be a JSON object, got {type(data).__name__}")
        fmt = data.get("format", FORMAT_NAME)
        if fmt != FORMAT_NAME:
            raise GenotypeError(f"format is {fmt!r}, expected {FORMAT_NAME!r}: is this a nas-restore genotype?")
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise GenotypeError(f"genotype version {version} is not supported (this nas-restore reads version "
                                f"{FORMAT_VERSION}); upgrade nas-restore")
        _require_keys(data, ("space", "cells"), "genotype")
        if not isinstance(data["cells"], dict) or not (data["cells"] or data.get("macro")):
            raise GenotypeError("genotype.cells must be an object {cell name: cell}, non-empty unless the "
                                "architecture is all macro choices")
        if len(data["cells"]) > MAX_CELLS:
            raise GenotypeError(f"genotype.cells has {len(data['cells'])} cells; at most {MAX_CELLS} are allowed")
        if not isinstance(data["space"], str) or not data["space"]:
            raise GenotypeError(f"genotype.space must be the name of a search space, got {data['space']!r}")
        cells = {name: CellGenotype.from_dict(c, f"cells.{name}") for name, c in data["cells"].items()}
        for key in ("macro", "space_config", "fusion", "metadata"):
            if not isinstance(data.get(key) or {}, dict):
                raise GenotypeError(f"genotype.{key} must be a JSON object, got {str(data[key])[:60]}")
        return cls(
            space=data["space"],
            cells=cells,
            macro=dict(data.get("macro") or {}),
            space_config=dict(data.get("space_config") or {}),
            fusion=dict(data.get("fusion") or {}),
            metadata=dict(data.get("metadata") or {}),
        )

    def validate(self, allowed_ops: Iterable[str] | None = None,
                 allowed_macro: dict[str, Iterable[str]] | None = None) -> "Genotype":
        allowed_ops = list(allowed_ops) if allowed_ops is not None else None
        for name, cell in self.cells.items():
            cell.validate(f"cells.{name}", allowed_ops)
        for key, choices in (allowed_macro or {}).items():
            choices = list(choices)
            if key not in self.macro:
                raise GenotypeError(f"macro.{key} is missing; allowed values: {', '.join(choices)}")
            if self.macro[key] not in choices:
                raise GenotypeError(f"macro.{key} is {self.macro[key]!r}; allowed values: {', '.join(choices)}"
                                    + _suggest(self.macro[key], choices))
        return self

    def copy(self) -> "Genotype":
        return copy.deepcopy(self)


# --------------------------------------------------------------------------------------------------
# files


def read_genotype_file(path: str | Path, name: str | None = None) -> Genotype:
    """A genotype from an existing file: genotype JSON, or DARTS ``Genotype(...)`` text.

    Structure only: checking the genotype against its space (and resolving run folders or built-in
    names) is :func:`nas_restore.sources.load_genotype`'s job. A text file holding several
    ``NAME = Genotype(...)`` (a DARTS ``genotypes.py``) needs ``name``.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise GenotypeError(f"{path} is {size / 2**20:.1f} MiB; a genotype file is a few kB (at most "
                            f"{MAX_FILE_BYTES // 2**20} MiB): give the genotype.json that a search wrote")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise GenotypeError(f"{path} is a binary file, not a genotype (a model.pt?): give a genotype.json, its run "
                            "folder or a DARTS Genotype(...) text file; a model.pt goes to evaluate, derain or "
                            "export") from None
    if not text.strip():
        raise GenotypeError(f"{path} is empty: give a genotype.json, its run folder or a DARTS Genotype(...) text "
                            "file")
    if text.lstrip().startswith(("{", "[")):
        if name is not None:
            raise GenotypeError(f"--name {name!r} picks one Genotype(...) of a text file; {path} is a JSON genotype")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GenotypeError(f"{path} is not valid JSON ({err}); fix or regenerate the file") from None
        except RecursionError:
            raise GenotypeError(f"{path} nests its JSON too deeply to be a genotype; fix or regenerate the "
                                "file") from None
        try:
            return Genotype.from_dict(data)
        except GenotypeError as err:
            raise GenotypeError(f"{path}: {err}") from None
    try:
        found = parse_darts_genotypes(text)
        if not found:
            return parse_darts_genotype(text)  # a bare Genotype(...) without "NAME ="
    except GenotypeError as err:
        raise GenotypeError(f"{path} (read as DARTS text, since it is not JSON): {err}") from None
    if name is not None:
        if name not in found:
            raise GenotypeError(f"{path} has no genotype named {name!r}; pick one of {', '.join(found)} with --name")
        return found[name]
    if len(found) == 1:
        return next(iter(found.values()))
    raise GenotypeError(f"{path} defines {len(found)} genotypes ({', '.join(found)}): pick one with "
                        "--name, e.g. --name " + next(iter(found)))


# --------------------------------------------------------------------------------------------------
# NNI architecture dicts


_NNI_OP = re.compile(r"^(?P<cell>.+)/op_(?P<node>\d+)_(?P<slot>\d+)$")
_NNI_INPUT = re.compile(r"^(?P<cell>.+)/input_(?P<node>\d+)_(?P<slot>\d+)$")


def cells_from_nni_arch(arch: dict[str, Any], n_inputs: int = 2) -> tuple[dict[str, CellGenotype], dict[str, Any]]:
    """Split an NNI architecture dict into DAG cells and the remaining (macro) keys."""
    ops: dict[tuple[str, int, int], str] = {}
    inputs: dict[tuple[str, int, int], int] = {}
    rest: dict[str, Any] = {}
    for key, value in arch.items():
        if m := _NNI_OP.match(key):
            ops[(m["cell"], int(m["node"]), int(m["slot"]))] = str(value)
        elif m := _NNI_INPUT.match(key):
            chosen = value if isinstance(value, int) else list(value)
            if isinstance(chosen, list):
                if len(chosen) != 1:
                    raise GenotypeError(f"{key} chose {chosen}: a cell edge takes exactly one input")
                chosen = chosen[0]
            inputs[(m["cell"], int(m["node"]), int(m["slot"]))] = int(chosen)
        else:
            rest[key] = value
    if set(ops) != set(inputs):
        missing = sorted(set(ops) ^ set(inputs))[:3]
        raise GenotypeError(f"NNI architecture has ops without inputs or inputs without ops: {missing}")
    cells: dict[str, CellGenotype] = {}
    for name in sorted({k[0] for k in ops}):
        node_ids = sorted({k[1] for k in ops if k[0] == name})
        nodes = []
        for node in node_ids:
            slots = sorted(k[2] for k in ops if k[0] == name and k[1] == node)
            nodes.append([Edge(ops[(name, node, s)], inputs[(name, node, s)]) for s in slots])
        expected = list(range(n_inputs, n_inputs + len(nodes)))
        if node_ids != expected:
            raise GenotypeError(f"cell {name!r}: node numbers {node_ids} do not run {expected}; "
                                f"was the space built with n_inputs={n_inputs}?")
        cells[name] = CellGenotype(nodes=nodes, concat=expected, kind="dag", n_inputs=n_inputs)
    return cells, rest


def cells_to_nni_arch(cells: dict[str, CellGenotype]) -> dict[str, Any]:
    """The NNI keys (``<cell>/op_<node>_<slot>``, ``<cell>/input_<node>_<slot>``) of DAG cells."""
    arch: dict[str, Any] = {}
    for name, cell in cells.items():
        if cell.kind != "dag":
            raise GenotypeError(f"cell {name!r} is a {cell.kind} cell; only dag cells map to NNI's Cell")
        for i, node in enumerate(cell.nodes):
            number = cell.n_inputs + i
            for slot, edge in enumerate(node):
                arch[f"{name}/op_{number}_{slot}"] = edge.op
                arch[f"{name}/input_{number}_{slot}"] = [edge.input]
    return arch


# --------------------------------------------------------------------------------------------------
# DARTS text


_GENOTYPE_CALL = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*Genotype\s*\(")


def parse_darts_genotypes(text: str) -> dict[str, Genotype]:
    """Every ``NAME = Genotype(...)`` in a text (e.g. a DARTS ``genotypes.py``), parsed without ``eval``."""
    found: dict[str, Genotype] = {}
    for m in _GENOTYPE_CALL.finditer(text):
        start = m.end() - 1
        end = _matching_paren(text, start)
        name, k = m["name"], 2
        while name in found:  # e.g. DARTS's CNN and RNN files both define DARTS_V2
            name, k = f"{m['name']}#{k}", k + 1
        found[name] = parse_darts_genotype("Genotype" + text[start:end + 1], name=name)
    return found


def parse_darts_genotype(text: str, name: str | None = None) -> Genotype:
    """Parse one DARTS-format ``Genotype(normal=[...], normal_concat=..., ...)``.

    Accepts any field names (``normal``/``reduce``, TMICS's ``normal_2``, ...), ``range(a, b)``
    concats, irregular spacing, 5-node cells and operations outside the DARTS primitives. Fields
    ending in ``_concat`` belong to the cell of the same stem. Two edges per node, as in DARTS.
    """
    text = text.strip()
    if "=" in text.split("(")[0]:
        name = name or text.split("=")[0].strip()
        text = text.split("=", 1)[1].strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise GenotypeError(f"cannot parse DARTS genotype text ({err.msg} at column {err.offset}): "
                            "expected Genotype(normal=[('op', input), ...], normal_concat=[...], ...)") from None
    call = tree.body
    if not isinstance(call, ast.Call):
        raise GenotypeError("DARTS genotype text must be a call like Genotype(normal=[...], normal_concat=[...])")
    fields = {kw.arg: _literal(kw.value, kw.arg) for kw in call.keywords if kw.arg}
    if call.args:
        raise GenotypeError("positional fields in Genotype(...) are ambiguous: write them as normal=[...], ...")
    cells: dict[str, CellGenotype] = {}
    cell_fields = [k for k in fields if k != "concat" and not k.endswith("_concat")]
    for key, value in fields.items():
        if key == "concat" or key.endswith("_concat"):
            continue
        if not isinstance(value, list) or not all(isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str)
                                                  and isinstance(e[1], int) and not isinstance(e[1], bool)
                                                  for e in value):
            raise GenotypeError(f"field {key!r} must be a list of ('op', input) pairs: an operation name and a "
                                "node number, e.g. [('sep_conv_3x3', 0), ('skip_connect', 1)]")
        if len(value) > MAX_NODES * 2:
            raise GenotypeError(f"field {key!r} has {len(value)} edges; at most {MAX_NODES * 2} are allowed")
        concat = fields.get(f"{key}_concat")
        if concat is None and len(cell_fields) == 1:
            concat = fields.get("concat")  # RNN genotypes: Genotype(recurrent=[...], concat=[...])
        n_edges = len(value)
        if key == "recurrent":
            # DARTS RNN cells: one (op, input) per node; input 0 is the cell input
            nodes = [[Edge(str(op), int(i))] for op, i in value]
            cells[key] = CellGenotype(nodes=nodes, concat=list(concat or range(1, 1 + len(nodes))), kind="dag",
                                      n_inputs=1)
            continue
        if re.search(r"_\d+$", key) or n_edges % 2:
            # TMICS style (normal_1, normal_2, ...): the ops of a chain cell, applied in sequence
            nodes = [[Edge(str(op), int(i)) for op, i in value]]
            cells[key] = CellGenotype(nodes=nodes, concat=list(concat or []), kind="chain", n_inputs=1)
            continue
        nodes = [[Edge(str(op), int(i)) for op, i in value[j:j + 2]] for j in range(0, n_edges, 2)]
        if concat is None:
            concat = list(range(2, 2 + len(nodes)))
        cells[key] = CellGenotype(nodes=nodes, concat=list(concat), kind="dag", n_inputs=2)
    if not cells:
        raise GenotypeError("the DARTS genotype has no cell fields (e.g. normal=[...])")
    genotype = Genotype(space="darts", cells=cells, metadata={"source": "darts-text", "name": name})
    return genotype.validate()


def _literal(node: ast.AST, field_name: str) -> Any:
    """A safe literal, plus ``range(a, b)``, which DARTS-family code writes for concats."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        bounds = [a.value for a in node.args if isinstance(a, ast.Constant)]
        if node.keywords or not 1 <= len(node.args) <= 3 or len(bounds) != len(node.args) \
                or not all(isinstance(b, int) and not isinstance(b, bool) for b in bounds) or 0 in bounds[2:]:
            raise GenotypeError(f"field {field_name!r}: range(...) takes 1 to 3 whole numbers, got "
                                f"{ast.unparse(node)[:60]}; write e.g. range(2, 6)")
        numbers = range(*bounds)
        if len(numbers) > MAX_NODES + MAX_N_INPUTS:
            raise GenotypeError(f"field {field_name!r}: {ast.unparse(node)[:60]} lists {len(numbers)} node numbers; "
                                f"a cell has at most {MAX_NODES + MAX_N_INPUTS}: list the cell's output nodes, "
                                "e.g. range(2, 6)")
        return list(numbers)
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise GenotypeError(f"field {field_name!r} holds code that is not a plain literal: "
                            f"{ast.unparse(node)[:60]}; a genotype text holds only lists, tuples, strings and "
                            "numbers (and range(a, b)): write the values out") from None


def _matching_paren(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise GenotypeError("unbalanced parentheses in DARTS genotype text: close every '(' of Genotype(...)")


# --------------------------------------------------------------------------------------------------
# helpers


def _require_keys(data: dict, keys: Iterable[str], where: str) -> None:
    if not isinstance(data, dict):
        raise GenotypeError(f"{where} must be a JSON object")
    for key in keys:
        if key not in data:
            raise GenotypeError(f"{where} is missing the field {key!r}")


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = did_you_mean(word, choices)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
