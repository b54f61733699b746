"""Defense registry. One contract (docs/architecture.md): see :mod:`audit.defenses.base`."""

from audit.defenses.art_detectors import ActivationClustering, Roni, SpectralSignature
from audit.defenses.base import Defense, DefenseResult, NoDefense
from audit.defenses.dpa import DeepPartitionAggregation, FiniteAggregation
from audit.defenses.filters import InfluenceFilter, LossFilter, Sever
from audit.defenses.robust_regression import Huber, Ransac, Trim
from audit.defenses.sanitizers import AcceptanceRegion, SlabDefense, SphereDefense, SphereSlabDefense

DEFENSES: dict[str, type[Defense]] = {
    cls.name: cls
    for cls in (
        NoDefense,
        LossFilter,
        InfluenceFilter,
        Sever,
        SphereDefense,
        SlabDefense,
        SphereSlabDefense,
        ActivationClustering,
        SpectralSignature,
        Roni,
        DeepPartitionAggregation,
        FiniteAggregation,
        Trim,
        Huber,
        Ransac,
    )
}

__all__ = [
    "DEFENSES",
    "AcceptanceRegion",
    "Defense",
    "DefenseResult",
    "Huber",
    "InfluenceFilter",
    "LossFilter",
    "NoDefense",
    "Ransac",
    "Sever",
    "SlabDefense",
    "SphereDefense",
    "SphereSlabDefense",
    "Trim",
]
