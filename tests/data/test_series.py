"""Series data: the bundled real series, CSVs in both layouts, the cleaning policies and the malformed-CSV errors."""

import numpy as np
import pytest

from genforge.data.series import SeriesOptions, bundled_names, is_seasonal, load_series, season_length
from genforge.errors import GenforgeError


def write(tmp_path, text: str, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return f"csv-series:{path}"


def monthly(n=48, start="2020-01-01", seed=0):
    """A seasonal monthly series: trend + a 12-month sine + noise."""
    import pandas as pd

    t = np.arange(n)
    values = 100 + 0.5 * t + 10 * np.sin(2 * np.pi * t / 12) + np.random.default_rng(seed).normal(0, 2, n)
    return pd.date_range(start, periods=n, freq="MS"), values


def csv_text(times, columns: dict, time_name="date") -> str:
    lines = [",".join([time_name, *columns])]
    for i, t in enumerate(times):
        lines.append(",".join([str(t.date()), *("" if np.isnan(v[i]) else f"{v[i]:.4f}" for v in columns.values())]))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(bundled_names()))
def test_every_bundled_series_loads_clean_on_its_grid(name):
    data = load_series(f"series:{name}")
    assert data.series and data.source.startswith("statsmodels")
    for s in data.series:
        assert len(s.values) == len(s.times) >= 60 and np.isfinite(s.values).all()
        steps = np.diff(s.times).astype("timedelta64[D]").astype(int)
        assert steps.min() > 0 and steps.max() <= 366  # sorted, one step of the frequency apart
    info = data.info()
    assert info["n_series"] == len(data.series) and info["observations"] == sum(len(s.values) for s in data.series)


def test_the_bundled_series_have_their_frequency_season_and_seasonality():
    co2 = load_series("series:co2")
    assert (co2.freq, co2.season) == ("W-SAT", 52)
    report = co2.series[0].report  # statsmodels' co2 has 59 missing weeks: filled, none left
    assert report["missing"] + report["gaps"] == 59 - report["trimmed"] and report["filled"] > 0
    assert report["seasonal"]
    elnino = load_series("series:elnino")
    assert (elnino.freq, elnino.season, len(elnino.series[0].values)) == ("MS", 12, 61 * 12)
    assert elnino.series[0].report["seasonal"]
    nile = load_series("series:nile")
    assert nile.season == 1 and not nile.series[0].report["seasonal"]
    macro = load_series("series:macrodata")
    assert macro.season == 4 and {"realgdp", "cpi", "unemp"} <= {s.id for s in macro.series}
    assert [s.id for s in load_series("series:macrodata", SeriesOptions(target=["cpi"])).series] == ["cpi"]


def test_a_plain_two_column_file_needs_no_options(tmp_path):
    times, values = monthly()
    data = load_series(write(tmp_path, csv_text(times, {"sales": values})))
    assert (data.freq, data.season, [s.id for s in data.series]) == ("MS", 12, ["sales"])
    np.testing.assert_allclose(data.series[0].values, np.round(values, 4))
    assert data.series[0].report["seasonal"] and data.info()["totals"] == {
        "duplicates": 0, "gaps": 0, "missing": 0, "trimmed": 0, "outliers": 0}


def test_wide_and_long_layouts_give_the_same_series(tmp_path):
    times, a = monthly(seed=1)
    _, b = monthly(seed=2)
    wide = load_series(write(tmp_path, csv_text(times, {"a": a, "b": b}), "wide.csv"))
    rows = ["id,month,value"] + [f"{sid},{t.date()},{v[i]:.4f}" for sid, v in (("b", b), ("a", a))
                                 for i, t in enumerate(times)]
    long = load_series(write(tmp_path, "\n".join(rows) + "\n", "long.csv"),
                       SeriesOptions(id_column="id", target=["value"]))
    assert [s.id for s in wide.series] == [s.id for s in long.series] == ["a", "b"]
    for x, y in zip(wide.series, long.series):
        np.testing.assert_array_equal(x.values, y.values)
        np.testing.assert_array_equal(x.times, y.times)


def test_gaps_and_missing_values_are_filled_by_the_policy_and_counted(tmp_path):
    times, values = monthly()
    values[10] = np.nan  # a missing value
    keep = np.ones(len(times), bool)
    keep[[20, 21]] = False  # two missing timestamps
    spec = write(tmp_path, csv_text(times[keep], {"y": values[keep]}))
    filled = load_series(spec).series[0]
    assert (filled.report["gaps"], filled.report["missing"], filled.report["filled"]) == (2, 1, 3)
    assert len(filled.values) == len(times)
    before, after = round(values[9], 4), round(values[11], 4)  # linear in time: Oct 1 and Dec 1 around Nov 1
    assert filled.values[10] == pytest.approx(before + (after - before) * 31 / 61, abs=1e-9)
    carried = load_series(spec, SeriesOptions(fill="ffill")).series[0]
    assert carried.values[10] == round(values[9], 4) and carried.values[21] == carried.values[19]
    with pytest.raises(GenforgeError, match=r"2 missing timestamps and 1 missing values \(the first at 2020-11-01\)"):
        load_series(spec, SeriesOptions(fill="refuse"))


def test_outliers_are_found_on_the_seasonal_residual_and_clipped_or_kept(tmp_path):
    times, values = monthly(n=60)
    values[30] += 60  # a spike far outside the seasonal pattern
    spec = write(tmp_path, csv_text(times, {"y": values}))
    kept = load_series(spec).series[0]
    assert kept.report["outliers"] >= 1 and kept.report["outliers_clipped"] == 0
    assert kept.values[30] == pytest.approx(values[30], abs=1e-3)
    clipped = load_series(spec, SeriesOptions(outliers="clip")).series[0]
    assert clipped.report["outliers_clipped"] == clipped.report["outliers"] >= 1
    assert kept.report["outliers"] == 1 and clipped.values[30] < values[30] - 40  # only the spike, pulled back
    np.testing.assert_allclose(np.delete(clipped.values, 30), np.delete(kept.values, 30), atol=1e-9)
    times, values = monthly(n=60)
    clean = load_series(write(tmp_path, csv_text(times, {"y": values}), "clean.csv")).series[0]
    assert clean.report["outliers"] == 0


def test_duplicated_timestamps_are_averaged_and_a_constant_series_is_reported(tmp_path):
    text = "date,y,flat\n2021-01-01,1,5\n2021-01-02,2,5\n2021-01-02,4,5\n2021-01-03,3,5\n2021-01-04,4,5\n"
    data = load_series(write(tmp_path, text))
    y = data.series[0]
    assert data.freq == "D" and y.report["duplicates"] == 1 and list(y.values) == [1, 3, 3, 4]
    assert data.info()["constant_series"] == ["flat"]


@pytest.mark.parametrize("text, options, message", [
    ("value\n1\n2\n3\n", {}, r"row 2, column 'value': '1' is not a date"),
    ("date,y\n2021-01-01,1\n2021-13-45,2\n2021-01-03,3\n", {}, r"row 3, column 'date': '2021-13-45' is not a date"),
    ("date,y\n2021-01-01,1\n2021-01-02,abc\n2021-01-03,3\n", {}, r"row 3, column 'y': 'abc' is not a number"),
    ("date,y\n2021-01-01,1\n2021-01-02,2\n", {}, r"2 distinct timestamps; a series needs at least 3"),
    ("date,y\n2021-01-01,1\n2021-01-02,2\n2021-01-03,3\n", {"time_column": "when"}, r"no time column 'when'"),
    ("date,y\n2021-01-01,1\n2021-01-02,2\n2021-01-03,3\n", {"target": ["z"]}, r"no column 'z'"),
    ("date\n2021-01-01\n2021-01-02\n2021-01-03\n", {}, r"only a time column"),
    ("date,y\n2021-01-01,1\n2021-01-05,2\n2021-01-06,3\n2021-02-19,4\n", {},
     r"cannot infer the frequency .* data.series.freq"),
    ("date,y\n2021-01-01,1\n2021-01-02,2\n2021-01-03,3\n", {"freq": "fortnightly"}, r"is not a pandas frequency"),
    ("date,y\n2021-01-01,1\n2021-01-02,2\n2021-01-03,3\n", {"freq": "MS"}, r"is not on the MS grid"),
])
def test_a_malformed_csv_is_one_error_naming_the_place_and_the_fix(tmp_path, text, options, message):
    with pytest.raises(GenforgeError, match=message) as e:
        load_series(write(tmp_path, text), SeriesOptions(**options))
    assert "csv-series:" in str(e.value) and "\n" not in str(e.value)


def test_unknown_and_missing_sources_name_the_choices(tmp_path):
    with pytest.raises(GenforgeError, match="unknown bundled series 'nope'; choose one of co2"):
        load_series("series:nope")
    with pytest.raises(GenforgeError, match="is not a file"):
        load_series(f"csv-series:{tmp_path / 'missing.csv'}")


def test_seasonality_and_season_length():
    t = np.arange(120)
    assert is_seasonal(np.sin(2 * np.pi * t / 12) + 0.01 * t, 12)
    assert not is_seasonal(np.random.default_rng(0).normal(size=120), 12)
    assert [season_length(f) for f in ("MS", "W-SUN", "QS-OCT", "YS", "D", "h")] == [12, 52, 4, 1, 7, 24]


def test_data_info_reports_a_csv_and_refuses_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    import json

    from helpers import run_cli

    times, values = monthly()
    keep = np.ones(len(times), bool)
    keep[5] = False
    spec = write(tmp_path, csv_text(times[keep], {"y": values[keep]}))
    code, out, err = run_cli(capsys, monkeypatch, "data", "info", spec, "fill=ffill", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["freq"], info["season"], info["totals"]["gaps"], info["series"]["y"]["filled"]) == ("MS", 12, 1, 1)
    assert info["time_column"] == "date"  # which column was read as the times
    code, _, err = run_cli(capsys, monkeypatch, "data", "info", spec, "fill=refuse")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "1 missing timestamps" in lines[0], err


@pytest.mark.parametrize("pairs, message", [
    (["fil=x"], "unknown series option 'fil'; the options are time_column"),
    (["fill=x"], "series option 'fill': Input should be 'interpolate', 'ffill' or 'refuse'"),
    (["fill"], "must look like key=value"),
])
def test_series_options_are_validated_with_the_key_and_the_choices(pairs, message):
    from genforge.data.series import options_from

    with pytest.raises(GenforgeError, match=message):
        options_from(pairs)
    assert options_from(["data.series.fill=ffill", "target=[a, b]"]) == SeriesOptions(fill="ffill", target=["a", "b"])


def test_a_csv_with_a_byte_order_mark_keeps_its_first_column_name(tmp_path):
    """Excel's "CSV UTF-8" starts with U+FEFF, which plain utf-8 reads into the first column's name."""
    times, a = monthly(seed=1)
    rows = ["id,month,value"] + [f"a,{t.date()},{a[i]:.4f}" for i, t in enumerate(times)]
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeff".encode() + ("\n".join(rows) + "\n").encode())
    data = load_series(f"csv-series:{path}", SeriesOptions(id_column="id", target=["value"]))
    assert [s.id for s in data.series] == ["a"] and len(data.series[0].values) == len(times)


@pytest.mark.parametrize("value", ["inf", "-inf", "1e999", "Infinity", "1e39"])
@pytest.mark.parametrize("column", ["y", "promo"])
def test_infinite_values_are_refused_where_the_file_is_read(tmp_path, value, column):
    times, values = monthly()
    promo = np.zeros(len(times))
    text = csv_text(times, {"y": values, "promo": promo}).splitlines()
    cells = text[7].split(",")
    cells[1 if column == "y" else 2] = value
    text[7] = ",".join(cells)
    spec = write(tmp_path, "\n".join(text) + "\n")
    with pytest.raises(GenforgeError, match=rf"row 8, column '{column}': '{value}' is not finite") as e:
        load_series(spec, SeriesOptions(target=["y"], covariates=["promo"]))
    assert "\n" not in str(e.value)


def test_nan_stays_a_missing_value_that_the_fill_policy_fills(tmp_path):
    times, values = monthly()
    text = csv_text(times, {"y": values}).splitlines()
    text[7] = text[7].split(",")[0] + ",nan"
    filled = load_series(write(tmp_path, "\n".join(text) + "\n")).series[0]
    assert filled.report["missing"] == 1 and np.isfinite(filled.values).all()


def test_the_robust_smoother_is_statsmodels_lowess_on_a_grid():
    """The cleaning's trend is robust LOWESS (Cleveland 1979) as statsmodels computes it, vectorized over the grid's
    windows: statsmodels' own loop clears an n-long weight array per point, O(n^2) (27 s at 80,000 points)."""
    from statsmodels.nonparametric.smoothers_lowess import lowess

    from genforge.data.series import robust_lowess

    rng = np.random.default_rng(0)
    for n, k in ((5, 7), (60, 25), (400, 7), (3000, 49), (3001, 48)):
        t = np.arange(n)
        y = 100 + 0.01 * t + 10 * np.sin(2 * np.pi * t / 24) + rng.standard_t(3, n)  # heavy tails
        y[n // 3] += 80
        expected = lowess(y, t.astype(float), frac=min(1.0, k / n), it=3, return_sorted=False)
        np.testing.assert_allclose(robust_lowess(y, k), expected, rtol=0, atol=1e-8)
        np.testing.assert_allclose(robust_lowess(y, k, block=1000), expected, rtol=0, atol=1e-8)  # blocks of rows


def test_outliers_on_a_long_hourly_series_are_the_planted_ones(tmp_path):
    """A long series (30,000 hours, a daily season; the smoother works in blocks of ~21,000 rows): exactly the planted
    spikes are flagged, and clipped. The noise is bounded (uniform): Gaussian noise would put ~14 of 30,000 points
    past |z| = 3.5 by chance."""
    import pandas as pd

    n = 30_000
    t = np.arange(n)
    rng = np.random.default_rng(3)
    values = 50 + 0.0005 * t + 8 * np.sin(2 * np.pi * t / 24) + rng.uniform(-1, 1, n)
    spikes = rng.choice(n, 12, replace=False)
    values[spikes] += np.where(rng.random(12) < 0.5, -15, 15)
    times = pd.date_range("2020-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M")
    path = tmp_path / "hourly.csv"
    path.write_text("time,load\n" + "\n".join(f"{a},{b:.3f}" for a, b in zip(times, values)) + "\n")
    kept = load_series(f"csv-series:{path}").series[0]
    assert kept.report["outliers"] == 12 and kept.report["seasonal"]
    clipped = load_series(f"csv-series:{path}", SeriesOptions(outliers="clip")).series[0]
    moved = np.flatnonzero(np.abs(clipped.values - kept.values) > 1e-9)
    np.testing.assert_array_equal(moved, np.sort(spikes))
    assert (np.abs(clipped.values[moved] - kept.values[moved]) > 5).all()  # pulled back towards the pattern


def test_a_runaway_field_is_quoted_short_in_the_one_line(tmp_path):
    """An unclosed quote can make one cell of a whole file: the error names it without echoing it."""
    spec = write(tmp_path, 'date,y\n2021-01-01,1\n2021-01-02,"' + "x" * 200_000 + '"\n2021-01-03,3\n2021-01-04,4\n')
    with pytest.raises(GenforgeError, match=r"row 3, column 'y': 'x{40}'\.\.\. \(200,000 characters\) is not a number"
                       ) as e:
        load_series(spec)
    assert len(str(e.value)) < 400
