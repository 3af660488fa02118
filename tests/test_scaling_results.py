"""results.csv: reading, writing and the error messages for bad input."""
import numpy as np
import pytest

from scaling_jax.scaling import read_results, write_results


def write(tmp_path, text, name="results.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_round_trip_keeps_extra_columns(tmp_path):
    rows = [{"params": 1e6, "tokens": 2e7, "loss": 3.5, "name": "a", "lr": 1e-3},
            {"params": 2e6, "tokens": 4e7, "loss": 3.3, "name": "b", "lr": 2e-3}]
    data = read_results(write_results(tmp_path / "out" / "results.csv", rows))
    np.testing.assert_array_equal(data["params"], [1e6, 2e6])
    np.testing.assert_array_equal(data["lr"], [1e-3, 2e-3])
    assert list(data["name"]) == ["a", "b"]


def test_missing_column_is_named_with_the_columns_present(tmp_path):
    path = write(tmp_path, "params,tok,loss,seed\n1,2,3,0\n")
    with pytest.raises(ValueError, match=r"missing column 'tokens'; columns present: "
                                         r"params, tok, loss, seed"):
        read_results(path)


@pytest.mark.parametrize("value,shown", [("-4e7", "-40000000.0"), ("0", "0.0"), ("nan", "nan"),
                                         ("inf", "inf")])
def test_non_positive_or_non_finite_value_names_its_row(tmp_path, value, shown):
    path = write(tmp_path, f"params,tokens,loss\n1e6,2e7,3.5\n2e6,{value},3.3\n")
    with pytest.raises(ValueError, match=rf"tokens must be positive and finite, but row 2 "
                                         rf"\(line 3 of results.csv\) has tokens={shown}"):
        read_results(path)


def test_text_where_a_number_belongs_names_its_row(tmp_path):
    path = write(tmp_path, "params,tokens,loss\n1e6,2e7,diverged\n")
    with pytest.raises(ValueError, match=r"column 'loss' must hold numbers, but row 1 .* 'diverged'"):
        read_results(path)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="no data rows"):
        read_results(write(tmp_path, "params,tokens,loss\n"))
    with pytest.raises(ValueError, match="columns present: none"):
        read_results(write(tmp_path, "", name="empty.csv"))
    with pytest.raises(ValueError, match="no such file"):
        read_results(tmp_path / "absent.csv")


def test_a_run_listed_twice_counts_once_with_a_warning_naming_the_lines(tmp_path, caplog):
    path = write(tmp_path, "params,tokens,loss,name\n1e6,2e7,3.5,a\n2e6,2e7,3.3,b\n1e6,2e7,3.5,a\n"
                           "1e6,2e7,3.4,a2\n2e6,2e7,3.3,b\n4e6,2e7,-1,c\n")
    with pytest.raises(ValueError, match=r"row 6 \(line 7 of results.csv\)"):  # rows keep their file numbers
        read_results(path)
    path = write(tmp_path, "params,tokens,loss,name\n1e6,2e7,3.5,a\n2e6,2e7,3.3,b\n1e6,2e7,3.5,a\n"
                           "1e6,2e7,3.4,a2\n2e6,2e7,3.3,b\n")
    with caplog.at_level("WARNING", logger="scaling_jax.scaling.results"):
        data = read_results(path)
    assert list(data["name"]) == ["a", "b", "a2"]  # a repeated seed with its own loss is kept
    np.testing.assert_array_equal(data["loss"], [3.5, 3.3, 3.4])
    assert "dropped 2 duplicate rows (line 4 repeats line 2, line 6 repeats line 3)" in caplog.text
