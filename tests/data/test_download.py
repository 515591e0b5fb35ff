import functools
import hashlib
import io
import socket
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from featdiff.data.download import OFFICIAL_ARCHIVES, download_cifar
from featdiff.data.official import load_official
from featdiff.errors import UserError


class CountingHandler(SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A local web server over tmp_path/www, counting the requests it answers."""
    www = tmp_path / "www"
    www.mkdir()
    requests: list[str] = []
    handler = type("Handler", (CountingHandler,), {"requests": requests})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_port}", requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def official_archive(tmp_path: Path, www: Path, fake_official, dataset: str):
    """A tar.gz laid out like the official one (a single top folder); returns (archive, md5, written)."""
    written = fake_official(tmp_path / "build", dataset, 4, test_count=6)
    archive = www / f"{dataset}-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(written.folder, arcname=written.folder.name)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest(), written


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


def test_official_sources_are_the_published_ones():
    assert OFFICIAL_ARCHIVES["cifar10"] == (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    )
    assert OFFICIAL_ARCHIVES["cifar100"] == (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
    )


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_download_verifies_extracts_and_round_trips(tmp_path, server, fake_official, dataset):
    www, base, requests = server
    archive, md5, written = official_archive(tmp_path, www, fake_official, dataset)
    dest = tmp_path / "data"
    folder = download_cifar(dataset, dest, url=f"{base}/{archive.name}", md5=md5)
    assert folder == dest / written.folder.name
    assert sorted(p.name for p in dest.iterdir()) == [written.folder.name]  # no archive or temp left
    train, test = load_official(dataset, dest)
    assert np.array_equal(train.images.numpy(), written.train_images)
    assert list(train.names) == written.train_names
    assert test.labels.tolist() == written.test_labels.tolist()
    assert len(requests) == 1


def test_present_folder_is_not_downloaded_again(tmp_path, server, fake_official):
    www, base, requests = server
    archive, md5, _ = official_archive(tmp_path, www, fake_official, "cifar10")
    dest = tmp_path / "data"
    first = download_cifar("cifar10", dest, url=f"{base}/{archive.name}", md5=md5)
    second = download_cifar("cifar10", dest, url=closed_port_url(), md5=md5)
    assert first == second and len(requests) == 1


def test_md5_mismatch_is_a_user_error_and_leaves_nothing(tmp_path, server, fake_official):
    www, base, _ = server
    archive, md5, _ = official_archive(tmp_path, www, fake_official, "cifar10")
    wrong = "0" * 32
    dest = tmp_path / "data"
    with pytest.raises(UserError) as caught:
        download_cifar("cifar10", dest, url=f"{base}/{archive.name}", md5=wrong)
    message = str(caught.value)
    assert md5 in message and wrong in message and "\n" not in message
    assert list(dest.iterdir()) == []


def test_unreachable_server_says_offline_and_leaves_nothing(tmp_path):
    dest = tmp_path / "data"
    url = closed_port_url()
    with pytest.raises(UserError) as caught:
        download_cifar("cifar10", dest, url=url)
    message = str(caught.value)
    assert message.startswith(f"cannot reach {url} (")
    assert "are you offline?" in message and str(dest) in message and "\n" not in message
    assert list(dest.iterdir()) == []


def test_archive_escaping_its_folder_is_refused(tmp_path, server):
    www, base, _ = server
    archive = www / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        payload = b"owned"
        member = tarfile.TarInfo("../escaped.txt")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    dest = tmp_path / "data"
    with pytest.raises(UserError, match="cannot extract"):
        download_cifar("cifar10", dest, url=f"{base}/{archive.name}", md5=hashlib.md5(archive.read_bytes()).hexdigest())
    assert not (tmp_path / "escaped.txt").exists()
    assert list(dest.iterdir()) == []


def test_incomplete_existing_folder_is_not_overwritten(tmp_path):
    folder = tmp_path / "data" / "cifar-100-python"
    folder.mkdir(parents=True)
    (folder / "train").write_bytes(b"partial")
    with pytest.raises(UserError, match="remove that folder"):
        download_cifar("cifar100", tmp_path / "data", url=closed_port_url())
    assert (folder / "train").read_bytes() == b"partial"
