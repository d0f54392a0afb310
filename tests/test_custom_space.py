"""A user's own search space from a file: the tutorial runs as written, and bad input is named clearly."""

import os
import re
import shlex
from pathlib import Path

import pytest
import torch

from nas_restore.build import build_model
from nas_restore.sources import load_genotype
from nas_restore.config import ConfigError
from nas_restore.genotype import GenotypeError
from nas_restore.nni_layer import random_architecture
from search_spaces import SpaceLoadError, find_space, generic_cells

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "custom_space.md"


def tutorial_blocks() -> list[tuple[str, str]]:
    return re.findall(r"```(\w+)\n(.*?)```", TUTORIAL.read_text(), flags=re.S)


@pytest.fixture()
def in_tmp(tmp_path):
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


@pytest.fixture()
def space_file(tmp_path) -> Path:
    code = next(c for lang, c in tutorial_blocks() if lang == "python" and c.startswith("# my_space.py"))
    path = tmp_path / "my_space.py"
    path.write_text(code)
    return path


def test_tutorial_python_and_cli_run_as_written(in_tmp):
    """The tutorial's space file, its Python search and its CLI line, verbatim."""
    blocks = tutorial_blocks()
    python = [c for lang, c in blocks if lang == "python"]
    assert len(python) == 2 and python[0].startswith("# my_space.py")
    (in_tmp / "my_space.py").write_text(python[0])
    exec(compile(python[1], str(TUTORIAL), "exec"), {"__name__": "tutorial"})
    genotype = load_genotype(in_tmp / "runs" / "my-space")
    assert genotype.space == "my_space.py:TinyDerain"  # relative: a genotype names no folder of its author's machine
    assert set(genotype.macro) == {"block"} and set(genotype.cells) == {"cell"}
    cell = genotype.cells["cell"]
    assert cell.n_inputs == 1 and cell.num_nodes == 2 and all(len(node) == 2 for node in cell.nodes)

    yaml_block = next(c for lang, c in blocks if lang == "yaml")
    (in_tmp / "my_search.yaml").write_text(yaml_block)
    line = next(c for lang, c in blocks if lang == "bash" and "nas-restore search" in c).strip()
    from nas_restore.cli import main

    assert main(shlex.split(line)[1:]) == 0
    out = Path(shlex.split(line)[-1])
    assert (in_tmp / out / "genotype.json").is_file() and (in_tmp / out / "alphas.csv").is_file()


def test_user_space_genotype_is_generic_and_builds_from_file(space_file, tmp_path):
    spec = find_space(f"{space_file}:TinyDerain")
    assert spec is find_space(f"{space_file}:TinyDerain")  # imported once
    config = spec.config(channels=4)
    assert config.frames == 1 and config.to_dict() == {"channels": 4}
    arch = random_architecture(spec.make_space(config), seed=3)
    genotype = spec.to_genotype(arch, config, {"strategy": "random"})
    assert genotype.macro == {"block": arch["block"]}
    assert spec.to_nni_arch(genotype) == arch
    model = build_model(load_genotype(genotype.save(tmp_path / "g.json")))
    assert model(torch.rand(2, 1, 3, 16, 16)).shape == (2, 3, 16, 16)
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in spec.make_space(config).freeze(arch).parameters())


def test_generic_cells_read_each_cells_number_of_inputs():
    arch = {"a/op_1_0": "x", "a/input_1_0": [0], "b/op_2_0": "y", "b/input_2_0": [1], "b/op_3_0": "z",
            "b/input_3_0": [2], "width": 16}
    cells, macro = generic_cells(arch)
    assert (cells["a"].n_inputs, cells["b"].n_inputs, cells["b"].num_nodes) == (1, 2, 2)
    assert macro == {"width": 16}


def test_user_space_errors_name_the_file_class_and_fix(space_file, tmp_path):
    with pytest.raises(SpaceLoadError, match=r"nope\.py does not exist.*path/to/file\.py:ClassName"):
        find_space(str(tmp_path / "nope.py") + ":Space")
    with pytest.raises(SpaceLoadError, match=r"has no class 'TinyDerian'\. Did you mean TinyDerain\?"):
        find_space(f"{space_file}:TinyDerian")
    with pytest.raises(SpaceLoadError, match=r"names no class: write .*:ClassName \(its model spaces: TinyDerain\)"):
        find_space(str(space_file))
    with pytest.raises(SpaceLoadError, match=r":BLOCKS is a list, not an NNI model space: derive it from"):
        find_space(f"{space_file}:BLOCKS")
    broken = tmp_path / "broken.py"
    broken.write_text("import nothing_of_that_name\n")
    with pytest.raises(SpaceLoadError, match=r"importing .*broken\.py failed: ModuleNotFoundError"):
        find_space(f"{broken}:Space")
    spec = find_space(f"{space_file}:TinyDerain")
    with pytest.raises(ConfigError, match=r"space\.chanels \(did you mean space\.channels\?\)"):
        spec.config(chanels=8)
    with pytest.raises(ValueError, match="has no preset 'paper'; presets: cpu"):
        spec.config("paper")
    with pytest.raises(KeyError, match="unknown search space 'tmic'"):
        find_space("tmic")


def test_genotype_that_no_longer_fits_the_space_is_refused(space_file):
    spec = find_space(f"{space_file}:TinyDerain")
    config = spec.config(channels=4)
    genotype = spec.to_genotype(random_architecture(spec.make_space(config), seed=0), config, {})
    genotype.macro["block"] = "Denseblocks_3_1"
    with pytest.raises(GenotypeError, match=r"does not fit space .*TinyDerain: .*Denseblocks_3_1 not found"):
        spec.validate_genotype(genotype)
    genotype.macro = {"block": "DilConv_3_2", "depth": 3}
    with pytest.raises(GenotypeError, match=r"labels \['depth'\] are not choices of the space"):
        spec.validate_genotype(genotype)
