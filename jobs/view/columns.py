"""What each units-table column means, shown beside the numbers on a unit page and in the API docs."""

from __future__ import annotations

MEANINGS: dict[str, str] = {
    "images": "images with a finite activation for this unit",
    "nonfinite_images": "images whose activation was NaN or infinite (left out of every statistic)",
    "act_mean": "mean activation over all positions and images",
    "act_std": "standard deviation of the activation over all positions and images",
    "max_mean": "mean over images of the per-image spatial max (the ranking statistic)",
    "max_std": "standard deviation over images of the per-image spatial max",
    "max_min": "smallest per-image spatial max in the dataset",
    "max_max": "largest per-image spatial max in the dataset (the unit's natural max)",
    "max_frac_positive": "fraction of images whose spatial max is above 0",
    "dead": "never positive, or constant, over the scanned images",
    "label": "class name of this logit unit",
    "fv_activation": "the channel render's spatial max at this unit, untransformed",
    "fv_robustness": "mean over 8 random transforms T of a(T(render)) / a(render): near 1 means robust",
    "fv_natural_ratio": "fv_activation / max_max: above 1, the render drives the unit harder than any dataset image",
    "fv_natural_ratio_p99": "fv_activation / max_p99",
}
for _q in (1, 5, 10, 25, 50, 75, 90, 95, 99):
    MEANINGS[f"max_p{_q:02d}"] = f"{_q}th percentile of the per-image spatial max (sketch, 1% relative accuracy)"

#: Columns a layer grid can be sorted by besides the unit index (when present in the units table).
SORTABLE = ("fv_natural_ratio", "fv_robustness", "fv_activation", "max_max", "max_mean", "max_frac_positive",
            "act_mean", "max_p99")


def meaning(column: str) -> str:
    return MEANINGS.get(column, "")
