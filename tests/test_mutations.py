"""Random mutations of valid schedule files: each is refused with a named error, or still means the same schedule.

A mutation replaces, deletes or adds one value anywhere in the file, or moves
one action; the reader must then either refuse the file with an error whose
message starts with the field at fault (or `missing:`/`deadlock:`), or accept
it and simulate it to the very figures of the file it came from (the stored
times and metrics are checked, docs/design.md section 5). Whatever the reader
accepts, the JSON Schema accepts too.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from test_hostile_inputs import VALIDATORS

from pipesynth.construct import generate
from pipesynth.core.simulate import simulate
from pipesynth.errors import PipesynthError
from pipesynth.formats import schedule_json

BASES = [
    schedule_json.dumps(generate("zb-h1", 2, 2, cap=[2, 2])),
    schedule_json.dumps(generate("1f1b", 2, 2, cost={"F": 1, "B": 2, "W": 1}, comm=0.5)),
    schedule_json.dumps(generate("v-half", 2, 2)),
]
FIGURES = [simulate(schedule_json.loads(text)).metrics for text in BASES]
#: How a refusal names what is wrong: the field's path, or the rule broken.
NAMED = re.compile(r"^(format|name|problem|actions|metrics|provenance|plan|file|schedule|missing|deadlock)\b")
SCHEMA: Draft202012Validator = VALIDATORS["schedule"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats()  # NaN and infinities too: json.dumps writes them as NaN, Infinity
    | st.sampled_from([0, 1, 2, -1, 0.5, 1e15, 1e16, "F", "B", "W", ""])
    | st.text(max_size=4)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


def nodes(value, path=()):
    """Every (path, value) in a parsed file, the root included."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from nodes(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from nodes(item, (*path, i))


def at(data, path):
    for key in path:
        data = data[key]
    return data


@st.composite
def mutated(draw):
    """(index of the base file, mutated text)."""
    index = draw(st.integers(0, len(BASES) - 1))
    data = json.loads(BASES[index])
    path, target = draw(st.sampled_from(list(nodes(data))[1:]))
    parent, key = at(data, path[:-1]), path[-1]
    how = draw(st.sampled_from(["replace", "delete", "add key", "move action"]))
    if how == "replace":
        parent[key] = draw(values)
    elif how == "delete":
        del parent[key]
    elif how == "add key" and isinstance(target, dict):
        target[draw(st.text(max_size=6))] = draw(values)
    elif how == "move action":
        actions = data["actions"]
        d = draw(st.integers(0, len(actions) - 1))
        if actions[d]:
            action = actions[d].pop(draw(st.integers(0, len(actions[d]) - 1)))
            e = draw(st.integers(0, len(actions) - 1))
            actions[e].insert(draw(st.integers(0, len(actions[e]))), action)
    return index, json.dumps(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutated())
def test_a_mutated_file_is_refused_by_name_or_means_the_same_schedule(case):
    index, text = case
    try:
        schedule = schedule_json.loads(text)
    except PipesynthError as err:
        message = str(err)
        assert NAMED.match(message) or ": unknown key" in message, message
        assert "\n" not in message
        return
    simulation = simulate(schedule)
    assert simulation.metrics == FIGURES[index]
    assert schedule.metrics is None or schedule.metrics == FIGURES[index]
    for d, dev in enumerate(schedule.actions):
        for k, a in enumerate(dev):
            assert a.start in (None, simulation.start[d][k]) and a.end in (None, simulation.end[d][k])
    assert not list(SCHEMA.iter_errors(json.loads(text))), "the reader took a file the schema refuses"


def test_an_unknown_key_with_a_newline_is_named_on_one_line():
    """Found by the mutation test above in a fresh-clone CI run: the key was printed raw."""
    data = json.loads(BASES[0])
    data["problem"]["\n"] = None
    with pytest.raises(PipesynthError) as caught:
        schedule_json.loads(json.dumps(data))
    assert str(caught.value).startswith('problem."\\n": unknown key')
