import pytest

from megadoc.analysis import plots, scaling, search

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_scaling_plot_writes_a_png_and_returns_the_fits(tmp_path):
    law = scaling.PowerLaw(A=0.5, B=0.6, C=3.0)
    k = [1, 2, 4, 8]
    path = tmp_path / "figs" / "ensemble.png"
    laws = plots.plot_scaling({"stitched": (k, law(k)), "two points": ([1, 2], [4.0, 3.9])}, str(path),
                              xlabel="members")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5000
    assert set(laws) == {"stitched"}  # no fit through fewer than 3 points
    assert laws["stitched"].C == pytest.approx(3.0, abs=1e-3)


def test_search_plot_writes_a_png(tmp_path):
    grid = search.grid_preset("real")
    results = [({"lr": lr, "weight_decay": wd, "epochs": 4}, 3.0 + lr * 10 + wd / 10)
               for lr in grid.axes[0][1] for wd in (0.1, 0.4)]
    path = tmp_path / "grid.png"
    plots.plot_search(grid, results, str(path), best=results[0][0])
    assert path.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="'mix' is not an axis"):
        plots.plot_search(grid, results, str(path), x_axis="mix")
