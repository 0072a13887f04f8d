"""`_Special` decides, per operation, which members send a call to botocore's generic
serializer; the service-model walk behind it is checked against a recorded snapshot.

tests/data/special_shapes.json holds, for every operation of the services in SERVICES
(botocore's own models: blobs, timestamps, doubles, documents, renamed members, recursive
structures), the sorted special member names, the body-scan pattern and the gates of
`_Special(model)`, one line per operation. It was made with botocore 1.40.61's models and the
three walkers serialise.py had before they became one (`_converted`/`special_keys`, `_reaches`,
`_gate`), by running this module: `.venv/bin/python -m tests.test_aws_serialise_shapes
--regenerate`, which writes the file again from the code under test. Do that only for a
deliberate change of behaviour, or after a botocore upgrade with serialise.py unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import botocore
import botocore.session
import pytest

from logpipe.aws.serialise import _Special, special_keys

pytestmark = pytest.mark.unit

FIXTURE = Path(__file__).resolve().parent / "data" / "special_shapes.json"
RECORDED_WITH = "1.40.61"  # botocore of the snapshot
CALLED = ("dynamodb", "sqs")  # compared under any botocore
SERVICES = (
    "dynamodb",  # recursive AttributeValue, blobs
    "sqs",  # the gated Entries of SendMessageBatch
    "mq",  # renamed members nested in structures and lists (locationName)
    "kinesis",  # blobs, timestamps, doubles
    "lambda",  # blobs inside structures
    "bedrock-agent-runtime",  # documents, recursive filters
    "glue",  # documents, doubles, deep structures
    "cloudwatch",  # doubles and timestamps in lists and maps
)


def describe(operation: Any) -> dict[str, Any]:
    """What `_Special` computed for one operation, as JSON values."""
    special = _Special(operation)
    return {
        "names": sorted(special_keys(operation.input_shape)),
        "pattern": None if special.pattern is None else special.pattern.pattern.decode(),
        "gates": {
            member: None if gate is None else sorted(gate) for member, gate in special.gates.items()
        },
    }


def snapshot(service: str) -> dict[str, Any]:
    """Operation name -> `describe` of it, for every operation of `service`."""
    model = botocore.session.get_session().get_service_model(service)
    return {name: describe(model.operation_model(name)) for name in model.operation_names}


@pytest.mark.parametrize("service", SERVICES)
def test_special_members_are_those_recorded(service: str) -> None:
    """Every operation of the snapshot's botocore is walked as recorded. Under another
    botocore (CI's job on the newest versions) the models themselves differ: the services
    we call are still compared, operation by operation where both have it, the hot ones
    required; the others only when the version is the snapshot's."""
    if botocore.__version__ != RECORDED_WITH and service not in CALLED:
        pytest.skip(f"models of botocore {botocore.__version__}, snapshot of {RECORDED_WITH}")
    recorded = json.loads(FIXTURE.read_text())[service]
    computed = snapshot(service)
    if botocore.__version__ == RECORDED_WITH:
        assert computed.keys() == recorded.keys()
    common = computed.keys() & recorded.keys()
    assert {"BatchWriteItem", "SendMessageBatch"} & recorded.keys() <= common
    differ = [name for name in sorted(common) if computed[name] != recorded[name]]
    assert not differ, f"{service}: {differ[:5]}: {computed[differ[0]]} != {recorded[differ[0]]}"


# Operations checked by hand: (service, operation, names, gates).
KNOWN = [
    pytest.param(
        "sqs",
        "SendMessageBatch",
        ["BinaryListValues", "BinaryValue"],
        {"Entries": ["MessageAttributes", "MessageSystemAttributes"]},
        id="sqs-gated-entries",
    ),
    pytest.param(
        "dynamodb", "BatchWriteItem", ["B", "BS"], {"RequestItems": None}, id="dynamodb-recursive"
    ),
    pytest.param("dynamodb", "ListTables", [], {}, id="nothing-special"),
    pytest.param("kinesis", "PutRecords", ["Data"], {"Records": ["Data"]}, id="blob-in-list"),
    pytest.param(
        "bedrock-agent-runtime",
        "Retrieve",
        ["additionalModelRequestFields", "knowledgeBaseId", "value"],
        {"knowledgeBaseId": None, "retrievalConfiguration": None},
        id="documents-and-renamed",
    ),
    pytest.param(
        "cloudwatch",
        "PutMetricData",
        ["Counts", "Maximum", "Minimum", "SampleCount", "Sum", "Timestamp", "Value", "Values"],
        {
            "MetricData": ["Counts", "StatisticValues", "Timestamp", "Value", "Values"],
            "EntityMetricData": ["MetricData"],
        },
        id="doubles-timestamps-nested-gates",
    ),
]


@pytest.mark.parametrize(("service", "operation", "names", "gates"), KNOWN)
def test_known_operations(
    service: str, operation: str, names: list[str], gates: dict[str, list[str] | None]
) -> None:
    model = botocore.session.get_session().get_service_model(service)
    computed = describe(model.operation_model(operation))
    assert computed["names"] == names
    assert computed["gates"] == gates
    assert (computed["pattern"] is None) == (not names)


def regenerate() -> None:
    """Write the fixture from the code under test, one line per operation."""
    lines = []
    for service in SERVICES:
        operations = snapshot(service).items()
        rows = ",\n".join(f"  {json.dumps(name)}: {json.dumps(op)}" for name, op in operations)
        lines.append(f" {json.dumps(service)}: {{\n{rows}\n }}")
    FIXTURE.write_text("{\n" + ",\n".join(lines) + "\n}\n")


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate"]:
    regenerate()
