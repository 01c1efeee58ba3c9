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

# Everything loaded so far lives as long as the snapshot: keep it out of the collector's walks,
# which would otherwise touch (and so copy) every page of the snapshot's heap in each execution.
import gc  # noqa: E402

gc.collect()
gc.freeze()
del gc
