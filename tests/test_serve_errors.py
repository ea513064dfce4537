import socket

import pytest

from helpers import adapters, serve, servermetrics
from helpers.profiles import load_profile


def test_busy_port_is_reported_before_anything_starts(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        server = serve.VLLMServer(load_profile("mini"), port=port, log_path=tmp_path / "log")
        with pytest.raises(serve.PortBusyError, match=f"Port {port} .* already in use"):
            server.start()
        assert server.process is None


def test_server_that_cannot_start_shows_its_log_tail(tmp_path, monkeypatch):
    server = serve.VLLMServer(load_profile("mini"), log_path=tmp_path / "server.log")
    monkeypatch.setattr(server, "command", lambda: ["python3", "-c",
                        "import sys; print('loading weights'); print('ValueError: no model here'); sys.exit(3)"])
    with pytest.raises(serve.ServerError, match="exited with code 3(.|\n)*no model here"):
        server.start(timeout=30)
    assert not server.running


def test_server_that_never_gets_healthy_is_killed(tmp_path, monkeypatch):
    server = serve.VLLMServer(load_profile("mini"), log_path=tmp_path / "server.log")
    monkeypatch.setattr(server, "command", lambda: ["python3", "-c", "import time; print('hanging'); time.sleep(600)"])
    with pytest.raises(serve.ServerError, match="not healthy after 3 s(.|\n)*hanging"):
        server.start(timeout=3)
    assert not server.running


def test_adapter_specs_are_checked(tmp_path):
    with pytest.raises(ValueError, match="NAME=DIR"):
        adapters.parse_adapters(["justaname"])
    with pytest.raises(adapters.AdapterError, match="no adapter_config.json"):
        adapters.parse_adapters([f"a={tmp_path}"])
    (tmp_path / "adapter_config.json").write_text("{}")
    assert adapters.parse_adapters([f"a={tmp_path}"]) == {"a": str(tmp_path)}


def test_metrics_parser_reads_vllm_series():
    text = ("# HELP vllm:generation_tokens_total Number of generation tokens.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            'vllm:generation_tokens_total{model_name="kurs-mini"} 128.0\n'
            "# TYPE other_metric gauge\nother_metric 1.0\n")
    parsed = servermetrics.parse_metrics(text)
    assert list(parsed) == ["vllm:generation_tokens"]
    assert servermetrics.metric_total(parsed, "vllm:generation_tokens", "_total") == 128.0
