"""Built-in reference genotypes: the released TMICS networks, in our TMICS space.

Loadable by name wherever a genotype path is accepted (``load_genotype("tmics-heavy")``,
``nas-restore render tmics-heavy``, ``nas-restore retrain tmics-light --out ...``), so a searched
architecture can be retrained and compared against them with the same recipe.
Besides the TMICS networks below: the hand designs ``rescnn`` and ``prn`` (PRN_r), and PRN_r and
PReNet_r as members of the searchable progressive space (``progressive-prn``, ``progressive-prenet-r``;
``search_spaces/progressive.py``), so that a searched progressive genotype meets them in its own space.

* ``tmics-heavy``: TGM alignment; every cell the chain ``Residualblocks_5_1 -> SPAattention_3 ->
  ECAattention_3 -> Residualblocks_3_1`` (+ cell input), as in ``multi_evaluate_dual_heavy.py``.
* ``tmics-light``: OFM alignment; every cell ``Residualblocks_5_1 -> SPAattention_3 -> DilConv_3_2 ->
  ECAattention_3``, as in ``multi_evaluate_dual_light.py``. The released network warps with a
  pretrained RAFT-small, which cannot be downloaded here; the closest stand-in that also brings a
  real flow from the first step (rather than one learned from zero) is the classical flow
  (``flow: classical``, scikit-image's iterative Lucas-Kanade, no weights). Set
  ``space_config.flow`` to ``learned`` in a copy of the JSON for the learned flow.

Both at the released size: 96 channels, 4 DNA + 4 CNA cells (all cells of a network share the one
genotype, as in the release), 5 input frames, AAS with one lambda per colour channel.

Parameter counts (``count_parameters(build_model(name))``):

==============  ============  ==========================================================
name            ours          released (analytic count, ../shared/seeds/RESEARCH.md §1.5)
==============  ============  ==========================================================
tmics-heavy     7,353,129     8,211,373 (7.64 M used in forward: ``decom2`` is never called)
tmics-light     5,530,937     6.75 M without RAFT (5.53 M used in forward), + RAFT-small ~1.0 M
==============  ============  ==========================================================

Where the difference comes from:

* **Cells agree** to 0.1 %: a heavy cell is 830,430 here against 829,849 released; a light cell
  665,308 against 664,824 (8 cells: 6.64 M and 5.32 M). Our ops carry a bias on every conv
  and no BatchNorm (see :mod:`nas_restore.ops`), which nearly cancel.
* **No guided-filter decomposition** (``Cell_Decom_3``, 574,669 parameters in the heavy network,
  which also instantiates an unused second copy, 0.57 M more). Ours has none: the rain-streak
  branch and the two searched branches are the whole body. This is most of the heavy gap.
* **Alignment**: our TGM (680,544) is larger than the released ``NNalignedModule`` (255,750), whose
  residual units are depthwise (``EnhanceResidualModule``); ours uses full 3x3 residual units
  (2 per group plus 2 after fusion at 96 channels). Our OFM encoder is 179,328 with classical
  flow (188,476 with the learned flow's 9,148), against RAFT-small (~1.0 M) plus its encoder.
* **Heads**: the released ``stem_out`` (96 -> 48 -> 32 channels) and two 96 -> 48 -> 3 heads with
  tanh are a single conv each here (rain branch 17,744, heads 2,595 each); the AAS module is
  931 against 460.
* The heavy network's DNA stem reads the rain estimate alone (3 -> 96); ours reads
  ``[centre, centre - rain]`` (6 -> 96) in both, as the light network does (+2,592).

So ours is 0.86 M (10 %) smaller than the released heavy network in total, 0.29 M (4 %) smaller
than what that network uses in its forward pass, and matches the light network's forward count
(5.53 M) without RAFT.
"""

from __future__ import annotations

from typing import Callable

from nas_restore.genotype import Genotype
from nas_restore.registry import Registry
from search_spaces import find_space
from search_spaces.baselines import baseline_genotype
from search_spaces.prn import prn_genotype
from search_spaces.progressive import prn_genotype as progressive_member
from search_spaces.tmics import PRESETS, chain_cell

HEAVY_OPS = ("Residualblocks_5_1", "SPAattention_3", "ECAattention_3", "Residualblocks_3_1")
LIGHT_OPS = ("Residualblocks_5_1", "SPAattention_3", "DilConv_3_2", "ECAattention_3")


def _tmics_reference(name: str, alignment: str, ops: tuple[str, ...], flow: str, source: str) -> Genotype:
    spec = find_space("tmics")
    config = spec.config("paper", cell="chain", flow=flow, nodes_per_cell=len(ops))
    genotype = Genotype(
        space="tmics",
        cells={"dna": chain_cell(ops), "cna": chain_cell(ops)},
        macro={"alignment": alignment},
        space_config=config.to_dict(),
        fusion={"type": "aas", "mode": config.fusion_mode},
        metadata={"name": name, "source": source, "strategy": "released (TMICS, Mu et al., IEEE TIP 2022)",
                  "note": "reference architecture, not a search result; paper preset: "
                          f"{PRESETS['paper']}"},
    )
    return spec.validate_genotype(genotype)


# name -> a factory of a fresh copy (genotypes are mutable)
REFERENCES: Registry[Callable[[], Genotype]] = Registry("reference genotype")
REFERENCES.register("tmics-heavy", lambda: _tmics_reference(
    "tmics-heavy", "tgm", HEAVY_OPS, "learned", "TMICS code, multi_evaluate_dual_heavy.py / TMICS_Heavy.py"))
REFERENCES.register("tmics-light", lambda: _tmics_reference(
    "tmics-light", "ofm", LIGHT_OPS, "classical", "TMICS code, multi_evaluate_dual_light.py / TMICS_Light.py"))
# the hand-designed residual CNN baseline, at about the demo genotype's parameter count
REFERENCES.register("rescnn", lambda: baseline_genotype("demo"))
# the field's small hand design PRN_r (Ren et al. CVPR 2019) at its published size: 21,123 weights, 6 shared stages
REFERENCES.register("prn", lambda: prn_genotype("paper"))
# the same PRN_r, and PReNet_r (+ ConvLSTM: 94,979 weights), as members of the searchable progressive space
REFERENCES.register("progressive-prn", lambda: progressive_member("paper"))
REFERENCES.register("progressive-prenet-r", lambda: progressive_member("paper", recurrent=True))


def reference_names() -> list[str]:
    return sorted(REFERENCES.names())


def find_reference(name: str) -> Genotype | None:
    """A fresh copy of the reference genotype ``name``, or None if there is none of that name."""
    make = REFERENCES.find(name)
    return make() if make is not None else None


def reference_genotype(name: str) -> Genotype:
    """The reference genotype ``name``; :class:`~nas_restore.errors.UnknownNameError` naming the known ones."""
    return REFERENCES.lookup(name)()


__all__ = ["REFERENCES", "HEAVY_OPS", "LIGHT_OPS", "reference_names", "find_reference", "reference_genotype"]
