import pytest

from contexts import make_context
from shopdb_operator.builders import ClusterContext


@pytest.fixture
def ctx() -> ClusterContext:
    return make_context()
