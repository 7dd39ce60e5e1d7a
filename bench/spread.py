"""A long sequential stack spread over layer groups (bench/sequential.py ``--layer-groups``)."""

from __future__ import annotations

from ftedit.core.hparams import FTHyperParams


class Spread:
    """A long stack spread over layer groups (an experiment, stop 31): edits 1..each go to
    ``groups[0]`` (the hparams' layers), the next ``each`` to ``groups[1]``, and so on, round
    and round. ``keep`` "own": an edit keeps (keep_prior_*) the keys of the earlier edits of
    its own group only, so each group's exact keep basis holds its own edits' keys, not every
    edit's; "all": every earlier edit's keys, as an unspread stack does (only the layers move
    on, leaving the earlier groups' matrices as their edits made them)."""

    def __init__(self, groups: list[list[int]], each: int, keep: str = "own"):
        if each < 1 or len(groups) < 2:
            raise SystemExit("--layer-groups needs --group-edits >= 1 and one group at least")
        if keep not in ("own", "all"):
            raise SystemExit(f"--group-keep must be 'own' or 'all', got {keep!r}")
        self.groups, self.each = [list(g) for g in groups], each  # as JSON gives them back
        self.keep = keep

    def group(self, n: int) -> int:
        """The group of the edit made on ``n`` earlier ones."""
        return (n // self.each) % len(self.groups)

    def edit(self, hp: FTHyperParams, done: list) -> tuple[FTHyperParams, list]:
        """The hparams and the earlier edits to keep for the edit made on top of ``done``."""
        g = self.group(len(done))
        if self.keep == "own":
            done = [r for j, r in enumerate(done) if self.group(j) == g]
        return hp.replace(layers=self.groups[g]), done

    def to_dict(self) -> dict:  # "own" (the first runs') is not written
        return {"groups": self.groups, "each": self.each} | (
            {"keep": self.keep} if self.keep != "own" else {}
        )

    @classmethod
    def from_dict(cls, d: dict | None) -> Spread | None:
        """The spread :meth:`to_dict` wrote (None for none)."""
        return cls(d["groups"], d["each"], d.get("keep", "own")) if d else None

    def plan(self, n: int) -> list[tuple]:
        """The layers each of the first ``n`` edits goes to and the earlier edits it keeps
        ("all", or "own": its group's; the first group's edits keep all there is)."""
        own = self.keep == "own"
        return [
            (tuple(self.groups[self.group(j)]), "own" if own and j >= self.each else "all")
            for j in range(n)
        ]
