"""A colour legend of the classes for pictures that draw masks over images (galleries, prediction grids)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from agir.masks import IGNORE_COLOR, color_for_name


def class_legend_handles(classes: Sequence[Mapping], ignore: bool = False) -> list:
    """One coloured patch per class of a classes.json list (index order), plus `ignore` when asked."""
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor=c.get("color") or color_for_name(str(c["name"])), edgecolor="#444444", label=str(c["name"]))
        for c in sorted(classes, key=lambda c: int(c["index"]))
    ]
    if ignore:
        handles.append(Patch(facecolor=IGNORE_COLOR, edgecolor="#444444", label="ignore"))
    return handles


def add_class_legend(fig, classes: Sequence[Mapping], ignore: bool = False) -> None:
    """A legend row under the figure's panels naming each class colour (nothing when there are no classes)."""
    handles = class_legend_handles(classes, ignore=ignore)
    if not handles:
        return
    fig.legend(handles=handles, loc="lower center", ncol=min(8, len(handles)), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    # room below the panels for the legend rows (about 0.25 inch each); call after tight_layout
    rows = (len(handles) + 7) // 8
    fig.subplots_adjust(bottom=min(0.4, (0.25 * rows + 0.1) / fig.get_figheight()))
