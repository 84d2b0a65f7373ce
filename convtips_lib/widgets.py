"""ipywidgets the lessons share. Each callback is a plain function a notebook (and CI) can call directly."""
from __future__ import annotations

import ipywidgets as w
import pandas as pd
from PIL import Image

from .plots import show_images

__all__ = ["filter_cells", "show_cells", "dataset_browser"]

ANY = "any"


def filter_cells(df: pd.DataFrame, label: str = ANY, module_type: str = ANY, prob: str = ANY) -> pd.DataFrame:
    """ELPV rows matching a binary label, module type (mono/poly) and defect probability ('0', '1/3', '2/3', '1')."""
    keep = pd.Series(True, index=df.index)
    for col, val in (("label_bin", label), ("type", module_type), ("label_4", prob)):
        if val != ANY:
            if val not in set(df[col]):
                raise ValueError(f"{col} has no value {val!r}: choose one of {sorted(set(df[col]))} or {ANY!r}")
            keep &= df[col] == val
    return df[keep]


def show_cells(df: pd.DataFrame, label: str = ANY, module_type: str = ANY, prob: str = ANY, n: int = 12,
               seed: int = 0):
    """A grid of up to `n` random cells matching the filters (the dataset browser's callback); returns the Figure."""
    rows = filter_cells(df, label, module_type, prob)
    rows = rows.sample(min(n, len(rows)), random_state=seed) if len(rows) else rows
    titles = [f"{r.label_4} {r.type}" for r in rows.itertuples()]
    return show_images([Image.open(p) for p in rows["path"]], titles, ncols=6,
                       suptitle=f"{len(rows)} of {len(filter_cells(df, label, module_type, prob))} matching cells")


def dataset_browser(df: pd.DataFrame) -> w.Widget:
    """Dropdowns for label, module type and defect probability plus a count slider; shows matching cells."""
    opts = lambda col: [ANY] + sorted(set(df[col]))  # noqa: E731
    controls = dict(label=w.Dropdown(options=opts("label_bin"), description="label"),
                    module_type=w.Dropdown(options=opts("type"), description="module"),
                    prob=w.Dropdown(options=opts("label_4"), description="P(defect)"),
                    n=w.IntSlider(12, 1, 24, description="cells"),
                    seed=w.IntSlider(0, 0, 99, description="shuffle"))

    def _show(**kw):
        import matplotlib.pyplot as plt
        show_cells(df, **kw)
        plt.show()

    out = w.interactive_output(_show, controls)
    return w.VBox([w.HBox(list(controls.values())[:3]), w.HBox(list(controls.values())[3:]), out])
