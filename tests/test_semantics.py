"""In-place semantics, errors and connection failures behave as with local FAISS."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

import faiss_proxy

from .conftest import Dataset, LiveServer


def test_normalize_l2_changes_the_callers_array(remote: ModuleType, local_faiss: ModuleType) -> None:
    x = np.random.RandomState(1).rand(50, 16).astype("float32")
    expected = x.copy()
    local_faiss.normalize_L2(expected)
    same = x
    assert remote.normalize_L2(x) is None
    assert same is x
    np.testing.assert_allclose(x, expected, rtol=1e-6)


def test_non_contiguous_array_is_updated_in_place(remote: ModuleType, local_faiss: ModuleType) -> None:
    base = np.random.RandomState(2).rand(40, 16).astype("float32")
    view = base[::2]
    assert not view.flags.c_contiguous
    expected = np.ascontiguousarray(view)
    local_faiss.normalize_L2(expected)
    # Local faiss refuses a non-contiguous view; the proxy sends it contiguous and
    # copies the result back into the caller's view (documented, more lenient).
    with pytest.raises(ValueError):
        local_faiss.normalize_L2(view)
    remote.normalize_L2(view)
    np.testing.assert_allclose(base[::2], expected, rtol=1e-6)


def test_search_fills_preallocated_outputs(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    index = remote.IndexFlatL2(dataset.d)
    index.add(dataset.xb)
    D = np.empty((len(dataset.xq), 5), dtype="float32")
    I = np.empty((len(dataset.xq), 5), dtype="int64")
    D2, I2 = index.search(dataset.xq, 5, D=D, I=I)
    assert D2 is D and I2 is I
    lo = local_faiss.IndexFlatL2(dataset.d)
    lo.add(dataset.xb)
    Dl, Il = lo.search(dataset.xq, 5)
    np.testing.assert_array_equal(I, Il)
    np.testing.assert_allclose(D, Dl, rtol=1e-5)


def test_reconstruct_into_preallocated_array(remote: ModuleType, dataset: Dataset) -> None:
    index = remote.IndexFlatL2(dataset.d)
    index.add(dataset.xb)
    out = np.zeros(dataset.d, dtype="float32")
    index.reconstruct(7, out)
    np.testing.assert_array_equal(out, dataset.xb[7])
    batch = np.zeros((5, dataset.d), dtype="float32")
    index.reconstruct_n(10, 5, batch)
    np.testing.assert_array_equal(batch, dataset.xb[10:15])


def test_inputs_are_not_modified(remote: ModuleType, dataset: Dataset) -> None:
    x = dataset.xb[:100].copy()
    index = remote.IndexFlatL2(dataset.d)
    index.add(x)
    index.search(x, 3)
    np.testing.assert_array_equal(x, dataset.xb[:100])


def test_faiss_errors_keep_their_type_and_message(remote: ModuleType, local_faiss: ModuleType) -> None:
    def both(fn):  # type: ignore[no-untyped-def]
        errors = []
        for faiss in (local_faiss, remote):
            with pytest.raises(Exception) as info:
                fn(faiss)
            errors.append(info.value)
        return errors

    # C++ exception -> RuntimeError with FAISS's message
    lo, re_ = both(lambda f: f.index_factory(8, "IVF4,Flat").search(np.zeros((1, 8), "float32"), 1))
    assert type(lo) is type(re_) is RuntimeError
    assert str(lo) == str(re_) and "not trained" in str(re_)
    # Python-level assertion in faiss's wrapper
    lo, re_ = both(lambda f: f.IndexFlatL2(8).add(np.zeros((3, 7), "float32")))
    assert type(lo) is type(re_) is AssertionError
    # SWIG argument errors
    lo, re_ = both(lambda f: f.IndexFlatL2("eight"))
    assert type(lo) is type(re_) is TypeError
    lo, re_ = both(lambda f: f.index_factory(8, "NoSuchIndex"))
    assert type(lo) is type(re_) is RuntimeError and str(lo) == str(re_)
    # unknown names
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        remote.NoSuchThing  # noqa: B018
    with pytest.raises(AttributeError):
        remote.IndexFlatL2(8).no_such_attribute  # noqa: B018
    # the session survives all of the above
    assert remote.IndexFlatL2(8).ntotal == 0


def test_timeout_gives_timeout_error(server: LiveServer, tenant: tuple[str, str]) -> None:
    from faiss_proxy._client import Client

    # The training takes ~1 s on this VM, five times the timeout.  (20000 x 32 with
    # 512 centroids took 0.3 s whatever the iterations, as FAISS 1.15 stops once the
    # objective settles: close enough to the 0.2 s timeout to finish in time now and then.)
    c = Client(server.url, tenant[1], timeout=0.2)
    x = np.random.RandomState(0).rand(20000, 64).astype("float32")
    km = c.lookup("Kmeans")(64, 512, niter=100)
    with pytest.raises(TimeoutError, match="did not answer"):
        km.train(x)
    c.close()


def test_dead_server_gives_connection_error() -> None:
    faiss_proxy.configure(api_url="http://127.0.0.1:9", api_key="k")
    try:
        with pytest.raises(ConnectionError, match="cannot reach"):
            faiss_proxy.IndexFlatL2(8)
    finally:
        faiss_proxy.configure(api_url="", api_key="")


def test_unsupported_argument_types_are_refused_client_side(remote: ModuleType) -> None:
    index = remote.IndexFlatL2(4)
    with pytest.raises(TypeError, match="cannot send"):
        index.add(object())
    with pytest.raises(TypeError, match="dtype"):
        index.add(np.array([["a", "b", "c", "d"]], dtype=object))


def test_remote_objects_refuse_pickling(remote: ModuleType) -> None:
    import pickle

    with pytest.raises(TypeError, match="serialize_index"):
        pickle.dumps(remote.IndexFlatL2(4))


def test_client_files_round_trip(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    index = remote.IndexFlatL2(dataset.d)
    index.add(dataset.xb)
    path = tmp_path / "x.index"
    faiss_proxy.write_index(index, path)
    assert path.exists()
    lo = local_faiss.read_index(str(path))
    back = faiss_proxy.read_index(path)
    np.testing.assert_array_equal(back.search(dataset.xq, 3)[1], lo.search(dataset.xq, 3)[1])
    with open(tmp_path / "y.index", "wb") as f:
        faiss_proxy.write_index(index, f)
    with open(tmp_path / "y.index", "rb") as f:
        assert faiss_proxy.read_index(f).ntotal == len(dataset.xb)
    binary = remote.IndexBinaryFlat(64)
    binary.add(np.zeros((3, 8), "uint8"))
    faiss_proxy.write_index_binary(binary, tmp_path / "b.index")
    assert faiss_proxy.read_index_binary(tmp_path / "b.index").ntotal == 3


@pytest.mark.parametrize("spin_us", [0, 50_000])
def test_reply_wait_with_and_without_spinning(server: LiveServer, tenant: tuple[str, str], spin_us: int) -> None:
    from faiss_proxy._client import Client

    c = Client(server.url, tenant[1], spin_us=spin_us)
    index = c.lookup("IndexFlatL2")(8)
    x = np.random.RandomState(3).rand(100, 8).astype("float32")
    index.add(x)
    for _ in range(5):
        assert index.search(x[:3], 1)[1].ravel().tolist() == [0, 1, 2]
    c.close()


# --- repeated calls: the worker answers them from a plan ---------------------------------
def test_repeated_calls_equal_local_faiss(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    """From its second time, the worker answers a request it has seen (same bytes but
    for the arrays' contents) from a plan; whatever changes between calls, each
    answer must be local faiss's."""
    r, lo = remote.IndexFlatL2(dataset.d), local_faiss.IndexFlatL2(dataset.d)
    r.add(dataset.xb)
    lo.add(dataset.xb)

    def same(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        D, I = r.search(q, k)
        Dl, Il = lo.search(q, k)
        np.testing.assert_array_equal(I, Il)
        np.testing.assert_allclose(D, Dl, rtol=1e-5)
        assert D.flags.writeable and I.flags.writeable
        return D, I

    answers = [same(dataset.xq[i : i + 1], 5) for i in range(6)]  # one shape: planned from the 2nd
    for i, (D, I) in enumerate(answers):  # no answer shares memory with a later one
        Dl, Il = lo.search(dataset.xq[i : i + 1], 5)
        np.testing.assert_array_equal(I, Il)
        np.testing.assert_allclose(D, Dl, rtol=1e-5)
    # other shapes and k, then the first shape again
    for q, k in ((dataset.xq[:3], 5), (dataset.xq[:1], 7), (dataset.xq[:1], 5), (dataset.xq[:3], 5)):
        same(q, k)
    # the index changes between planned calls
    for _ in range(2):
        r.add(dataset.xb[:10])
        lo.add(dataset.xb[:10])
        same(dataset.xq[:1], 5)
    assert r.ntotal == lo.ntotal
    r.reset()
    lo.reset()
    D, I = same(dataset.xq[:1], 5)
    assert (I == -1).all()


def test_a_planned_call_that_starts_failing_raises_as_faiss_does(
    remote: ModuleType, local_faiss: ModuleType, dataset: Dataset
) -> None:
    results = {}
    for name, faiss in (("remote", remote), ("local", local_faiss)):
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dataset.d), dataset.d, 8)
        index.train(dataset.xt)
        for _ in range(3):  # planned from the second call
            index.add(dataset.xb[:10])
        index.is_trained = False
        with pytest.raises(RuntimeError) as failed:
            index.add(dataset.xb[:10])
        with pytest.raises(RuntimeError):
            index.add(dataset.xb[:10])  # and again: the plan survives the error
        results[name] = (index.ntotal, str(failed.value))
    assert results["remote"][0] == results["local"][0] == 30
    assert "'is_trained' failed" in results["remote"][1]
    assert results["remote"][1] == results["local"][1]


def test_repeated_calls_with_views_and_outputs_equal_local_faiss(
    remote: ModuleType, local_faiss: ModuleType, dataset: Dataset
) -> None:
    """Calls the client does not encode from its cache (a non-contiguous query,
    keyword outputs) and those it does, in turn, give local faiss's results."""
    r, lo = remote.IndexFlatL2(dataset.d), local_faiss.IndexFlatL2(dataset.d)
    r.add(dataset.xb)
    lo.add(dataset.xb)
    wide = np.repeat(dataset.xq, 2, axis=0)[::2]  # rows of xq, not contiguous as a whole
    assert not wide.flags.c_contiguous
    Dl, Il = lo.search(dataset.xq[:5], 4)
    for _ in range(3):
        D, I = r.search(wide[:5], 4)
        np.testing.assert_array_equal(I, Il)
        D2 = np.empty((5, 4), dtype="float32")
        I2 = np.empty((5, 4), dtype="int64")
        D2r, I2r = r.search(dataset.xq[:5], 4, D=D2, I=I2)
        assert D2r is D2 and I2r is I2
        np.testing.assert_array_equal(I2, Il)
        D3, I3 = r.search(dataset.xq[:5], 4)
        np.testing.assert_array_equal(I3, Il)
        np.testing.assert_allclose(D3, Dl, rtol=1e-5)
