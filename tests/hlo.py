"""Reading programs in tests: the collectives of compiled HLO text (which devices each one groups, so a test can
tell a mesh axis's collectives from another's) and the dots of a traced jaxpr."""

import math
import re

import numpy as np


def replica_groups(line: str) -> list[list[int]] | None:
    """Replica groups of an HLO collective: explicit {{…}}, iota [n,g]<=[dims]T(perm), or mesh[…] {axes}."""
    m = re.search(r"replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}", line)
    if m:
        return [[int(v) for v in g.split(",") if v] for g in re.findall(r"\{([\d,]*)\}", m.group(1))]
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if m:
        dims = [int(v) for v in m.group(3).split(",")]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if m.group(4):
            ids = ids.transpose([int(v) for v in m.group(4).split(",")])
        return ids.reshape(int(m.group(1)), int(m.group(2))).tolist()
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", line)
    if m:
        axes = re.findall(r"'(\w+)'=(\d+)", m.group(1))
        names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
        picked = [names.index(a) for a in re.findall(r"'(\w+)'", m.group(2))]
        ids = np.moveaxis(np.arange(math.prod(sizes)).reshape(sizes), picked, range(-len(picked), 0))
        return ids.reshape(-1, math.prod(sizes[i] for i in picked)).tolist()
    return None


def axis_groups(mesh, axis: str) -> set[frozenset[int]]:
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    a = mesh.axis_names.index(axis)
    return {frozenset(g) for g in np.moveaxis(ids, a, -1).reshape(-1, mesh.shape[axis]).tolist()}


def jaxpr_dots(jaxpr):
    """Every dot_general equation of a jaxpr, sub-jaxprs (scan, cond, remat, custom VJP) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (list, tuple)) else [v]):
                inner = sub if hasattr(sub, "eqns") else getattr(sub, "jaxpr", None)  # Jaxpr or ClosedJaxpr
                if inner is not None:
                    yield from jaxpr_dots(getattr(inner, "jaxpr", inner))
