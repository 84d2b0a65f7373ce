"""Tests for convtips_lib.widgets: filters, the browser's callback, and that the widget builds without a front end."""
import ipywidgets as w
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from convtips_lib.data import elpv_frame  # noqa: E402
from convtips_lib.widgets import dataset_browser, filter_cells, show_cells  # noqa: E402


@pytest.fixture(scope="module")
def df():
    return elpv_frame()


def test_filter_cells_matches_pandas(df):
    got = filter_cells(df, label="defective", module_type="poly")
    want = df[(df["label_bin"] == "defective") & (df["type"] == "poly")]
    assert got.index.equals(want.index) and len(got) > 0


def test_filter_any_keeps_everything(df):
    assert len(filter_cells(df)) == len(df)


def test_filter_unknown_value_lists_choices(df):
    with pytest.raises(ValueError, match="mono.*poly"):
        filter_cells(df, module_type="thin-film")


def test_show_cells_draws_n_images(df):
    fig = show_cells(df, prob="1", n=5, seed=1)
    assert sum(1 for ax in fig.axes if ax.images) == 5
    assert "5 of" in fig._suptitle.get_text()


def test_show_cells_is_seeded(df):
    titles = lambda f: [ax.get_title() for ax in f.axes]  # noqa: E731
    assert titles(show_cells(df, n=6, seed=3)) == titles(show_cells(df, n=6, seed=3))


def test_browser_builds_with_all_controls(df):
    box = dataset_browser(df)
    controls = [c for row in box.children[:2] for c in row.children]
    assert isinstance(box, w.VBox) and len(controls) == 5
    assert set(controls[1].options) == {"any", "mono", "poly"}
