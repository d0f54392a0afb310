"""The layout promises of docs/architecture.md: no import circle, and each layer imports only what it needs."""

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("nas_restore", "search_spaces", "strategies")


def module_names() -> dict[str, Path]:
    names = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            names[name.removesuffix(".__init__")] = path
    return names


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``name`` imports anywhere (inside functions too), as the longest known prefix."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # a package importing its own submodules (to register them) is not a dependency on itself
            if target and target != name and not (path.name == "__init__.py" and target.startswith(name + ".")):
                found.add(target)
    return found


def test_no_import_circle_among_the_modules():
    modules = module_names()
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        graph.add_edges_from((name, target) for target in imported_modules(name, path, modules))
    circles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    assert not circles, f"import circles (move the concept that closes each): {circles}"
    assert graph.has_edge("nas_restore.temporal", "nas_restore.flow")  # the check sees real edges


# docs/architecture.md's layers, in data-flow order: a module imports only from its own layer or those above
LAYERS = {
    "foundation": ["nas_restore", "nas_restore.errors", "nas_restore.registry", "nas_restore.config",
                   "nas_restore.seeding", "nas_restore.device", "nas_restore.precision",
                   "nas_restore.threads", "nas_restore.run_records", "nas_restore.outputs"],
    "measures and operations": ["nas_restore.metrics", "nas_restore.statistics", "nas_restore.profiling", "nas_restore.ops", "nas_restore.flow"],
    "data": ["nas_restore.data", "nas_restore.data.folders", "nas_restore.data.synthetic", "nas_restore.data.video_synth", "nas_restore.datasets"],
    "losses": ["nas_restore.losses", "nas_restore.contrastive", "nas_restore.temporal"],
    "genotype format": ["nas_restore.genotype"],
    "NNI primitives": ["nas_restore.nni_layer", "nas_restore.nni_layer.setup", "nas_restore.nni_layer.space"],
    "spaces": ["search_spaces", "search_spaces.tmics", "search_spaces.rrgnet", "search_spaces.rdmc",
               "search_spaces.baselines", "search_spaces.prn", "search_spaces.progressive",
               "search_spaces.reference"],
    "strategies": ["strategies", "strategies.differentiable", "strategies.second_order", "strategies.triple_level",
                   "strategies.multi_trial", "strategies.skip_guard", "strategies.partial_channel",
                   "strategies.single_path", "strategies.mixing"],
    "genotype sources and graph": ["nas_restore.sources", "nas_restore.graph"],
    "build": ["nas_restore.build"],
    "retrain": ["nas_restore.training", "nas_restore.retraining"],
    "search": ["nas_restore.nni_layer.runner", "nas_restore.nni_layer.supernet", "nas_restore.nni_layer.ddp",
               "nas_restore.search_checkpoint",
               "nas_restore.search", "nas_restore.multitrial", "nas_restore.decision"],
    "evaluate": ["nas_restore.evaluation", "nas_restore.inference", "nas_restore.export"],
    "look at a genotype": ["nas_restore.analysis", "nas_restore.render", "nas_restore.render_run"],
    "studies": ["nas_restore.study", "nas_restore.compare", "nas_restore.rank", "nas_restore.continual",
                "nas_restore.replay", "nas_restore.plots", "nas_restore.report_common", "nas_restore.trust",
                "nas_restore.evidence"],
    "commands": ["nas_restore.cli", "nas_restore.demo"],
}


def test_every_module_imports_only_from_its_layer_or_those_before_it():
    modules = module_names()
    order = {m: i for i, names in enumerate(LAYERS.values()) for m in names}
    layer = list(LAYERS)
    assert set(modules) == set(order), f"place new modules in a layer: {sorted(set(modules) ^ set(order))}"
    upward = [f"{m} ({layer[order[m]]}) imports {t} ({layer[order[t]]})"
              for m, path in sorted(modules.items()) for t in sorted(imported_modules(m, path, modules))
              if order[t] > order[m]]
    assert not upward, "imports against the data flow: " + "; ".join(upward)


def _imported_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_a_space_needs_no_training_code_and_inference_needs_no_nni():
    # the NNI primitives a space is written with do not drag in training, losses or the runners
    loaded = _imported_after("import nas_restore.nni_layer")
    assert "nni" in loaded
    assert not {"nas_restore.training", "nas_restore.losses", "nas_restore.nni_layer.runner"} & loaded
    # building a genotype's network (what derain, evaluate and export do) imports neither NNI nor Lightning
    loaded = _imported_after("from nas_restore.build import build_model\nbuild_model('tmics-light')")
    assert "search_spaces.tmics" in loaded
    assert not {"nni", "pytorch_lightning", "nas_restore.training"} & loaded
