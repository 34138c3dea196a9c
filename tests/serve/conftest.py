from collections.abc import Iterator

import openai
import pytest

from tests.serve.fixtures import RunningServer, ServedCheckpoint, make_served_checkpoint, start_server


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> ServedCheckpoint:
    return make_served_checkpoint(tmp_path_factory.mktemp("served"), ranks=2)  # as a 2-process job leaves it


@pytest.fixture(scope="session")
def server(served: ServedCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One server for the API tests (default settings: 16 slots, 64 waiting)."""
    running = start_server(served, tmp_path_factory.mktemp("server") / "server.log")
    yield running
    running.stop()


@pytest.fixture
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
