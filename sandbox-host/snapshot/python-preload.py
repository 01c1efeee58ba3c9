# Run once while the Python snapshot is built (`make sandbox-runtimes`): what it imports is
# already loaded when an execution starts. Changing this file changes the snapshot, whose SHA-256
# sandbox-host/config/default.yaml pins. The names are deleted so `__main__` starts empty.
import collections
import csv
import datetime
import decimal
import fractions
import functools
import io
import itertools
import json
import math
import random
import re
import statistics
import string
import textwrap
import typing

import numpy
import pandas

del collections, csv, datetime, decimal, fractions, functools, io, itertools, json, math
del random, re, statistics, string, textwrap, typing, numpy, pandas


def _warm() -> None:
    """Takes the paths programs take first, so the snapshot holds what they leave behind: the
    submodules pandas and numpy import on first use, compiled regular expressions, and the
    interpreter's specialised bytecode."""
    import collections
    import datetime
    import json
    import re
    import statistics

    import numpy as np
    import pandas as pd

    re.findall(r"\w+", "a b a")
    re.sub(r"\s+", " ", "a  b")
    re.match(r"(\d+)-(\d+)", "1-2")
    re.compile(r"[A-Za-z0-9_.+-]+@[A-Za-z0-9-]+\.[A-Za-z]+").search("x a@b.co")
    json.loads(json.dumps({"a": [1, 2.5, "x", None, True]}, indent=2, sort_keys=True))
    datetime.datetime(2026, 1, 2, 3, 4, 5).isoformat()
    datetime.date(2026, 1, 1).strftime("%Y-%m-%d")
    datetime.datetime.strptime("2026-01-02", "%Y-%m-%d")
    collections.Counter("abca").most_common(1)
    statistics.mean([1, 2, 3])
    statistics.median([1, 2, 3])
    statistics.stdev([1.0, 2.0, 4.0])
    values = np.arange(100.0)
    grid = values.reshape(10, 10)
    _ = (values.mean(), values.std(), np.percentile(values, 50), grid @ grid.T, np.linalg.inv(grid + np.eye(10) * 1000))
    frame = pd.DataFrame(
        {"city": ["a", "b", "c", "a", "b"] * 20, "sales": values, "day": pd.date_range("2026-01-01", periods=100)}
    )
    frame.groupby("city").sales.sum().to_dict()
    frame.groupby("city").agg({"sales": ["sum", "mean", "max"]})
    frame.describe()
    frame.sort_values("sales", ascending=False).head(3).to_string()
    frame.pivot_table(index="city", values="sales", aggfunc="mean")
    frame.merge(frame.groupby("city", as_index=False).sales.mean(), on="city")
    frame.set_index("day").resample("W").sales.sum()
    frame.to_csv()
    frame.to_json()
    pd.read_csv(__import__("io").StringIO("a,b\n1,2\n"))
    frame["sales"].rolling(3).mean()
    frame.assign(double=frame.sales * 2).query("double > 10")


_warm()
del _warm

# Everything loaded so far lives as long as the snapshot: keep it out of the collector's walks,
# which would otherwise touch (and so copy) every page of the snapshot's heap in each execution.
import gc  # noqa: E402

gc.collect()
gc.freeze()
del gc
