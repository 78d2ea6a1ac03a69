"""The FAISS tutorial flows through the proxy give what local FAISS gives.

Every test builds the same index locally and remotely on the same data and
compares: exact equality where FAISS is deterministic (Flat, IVF with the same
training, HNSW built in the same insertion order with one thread).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from .conftest import Dataset


def _same_knn(D1: np.ndarray, I1: np.ndarray, D2: np.ndarray, I2: np.ndarray) -> None:
    np.testing.assert_array_equal(I1, I2)
    np.testing.assert_allclose(D1, D2, rtol=1e-5, atol=1e-5)


def test_flat_l2_and_ip(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    for cls in ("IndexFlatL2", "IndexFlatIP"):
        r = getattr(remote, cls)(dataset.d)
        lo = getattr(local_faiss, cls)(dataset.d)
        assert r.is_trained and r.ntotal == 0
        r.add(dataset.xb)
        lo.add(dataset.xb)
        assert r.ntotal == lo.ntotal == len(dataset.xb)
        _same_knn(*r.search(dataset.xq, 10), *lo.search(dataset.xq, 10))
        assert isinstance(r, remote.Index) and isinstance(r, remote.IndexFlat)


def test_ivfflat_with_explicit_quantizer(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    def build(faiss: ModuleType) -> object:
        quantizer = faiss.IndexFlatL2(dataset.d)
        index = faiss.IndexIVFFlat(quantizer, dataset.d, 32)
        assert not index.is_trained
        index.train(dataset.xt)
        assert index.is_trained
        index.add(dataset.xb)
        index.nprobe = 4
        return index

    r, lo = build(remote), build(local_faiss)
    assert r.nprobe == 4
    _same_knn(*r.search(dataset.xq, 5), *lo.search(dataset.xq, 5))
    r.nprobe = 32
    lo.nprobe = 32
    _same_knn(*r.search(dataset.xq, 5), *lo.search(dataset.xq, 5))


def test_scalar_quantizer_with_class_constants(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    """``faiss.ScalarQuantizer.QT_8bit`` and friends are class attributes, as in FAISS's wiki."""
    for qtype in ("QT_8bit", "QT_4bit", "QT_fp16"):
        assert getattr(remote.ScalarQuantizer, qtype) == getattr(local_faiss.ScalarQuantizer, qtype)

    def build(faiss: ModuleType) -> object:
        index = faiss.IndexScalarQuantizer(dataset.d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
        index.train(dataset.xt)
        index.add(dataset.xb)
        return index

    r, lo = build(remote), build(local_faiss)
    assert r.sq.qtype == remote.ScalarQuantizer.QT_8bit
    _same_knn(*r.search(dataset.xq, 5), *lo.search(dataset.xq, 5))
    assert remote.DirectMap.Hashtable == local_faiss.DirectMap.Hashtable  # the same for any faiss class


def test_ivfpq_index_factory(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    r = remote.index_factory(dataset.d, "IVF16,PQ8x4")
    lo = local_faiss.index_factory(dataset.d, "IVF16,PQ8x4")
    for index in (r, lo):
        index.train(dataset.xt)
        index.add(dataset.xb)
        index.nprobe = 8
    _same_knn(*r.search(dataset.xq, 10), *lo.search(dataset.xq, 10))
    ivf = remote.extract_index_ivf(r)
    assert ivf.nlist == 16 and ivf.nprobe == 8
    assert type(remote.downcast_index(r)).__name__ == "IndexIVFPQ"


def test_hnsw_nested_attributes(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    remote.omp_set_num_threads(1)  # same insertion order as the local build below
    local_faiss.omp_set_num_threads(1)
    try:
        r = remote.IndexHNSWFlat(dataset.d, 16)
        lo = local_faiss.IndexHNSWFlat(dataset.d, 16)
        for index in (r, lo):
            index.hnsw.efConstruction = 40
            index.add(dataset.xb)
            index.hnsw.efSearch = 64
        assert r.hnsw.efSearch == 64 and r.hnsw.efConstruction == 40
        _same_knn(*r.search(dataset.xq, 10), *lo.search(dataset.xq, 10))
        params = remote.SearchParametersHNSW(efSearch=128)
        lparams = local_faiss.SearchParametersHNSW(efSearch=128)
        _same_knn(*r.search(dataset.xq, 10, params=params), *lo.search(dataset.xq, 10, params=lparams))
        np.testing.assert_array_equal(r.hnsw.levels, local_faiss.vector_to_array(lo.hnsw.levels))
    finally:
        local_faiss.omp_set_num_threads(2)


def test_idmap_remove_reconstruct(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    ids = np.arange(len(dataset.xb), dtype="int64") * 7 + 3
    r = remote.IndexIDMap(remote.IndexFlatL2(dataset.d))
    lo = local_faiss.IndexIDMap(local_faiss.IndexFlatL2(dataset.d))
    for index in (r, lo):
        index.add_with_ids(dataset.xb, ids)
    removed_r = r.remove_ids(remote.IDSelectorRange(0, 1000))
    removed_l = lo.remove_ids(local_faiss.IDSelectorRange(0, 1000))
    assert removed_r == removed_l > 0
    _same_knn(*r.search(dataset.xq, 5), *lo.search(dataset.xq, 5))
    np.testing.assert_array_equal(r.id_map, local_faiss.vector_to_array(lo.id_map))
    flat = remote.downcast_index(r.index)
    np.testing.assert_array_equal(flat.reconstruct(0), local_faiss.downcast_index(lo.index).reconstruct(0))


def test_id_selectors_in_search_parameters(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    keep = np.arange(0, len(dataset.xb), 3, dtype="int64")
    r = remote.IndexFlatL2(dataset.d)
    lo = local_faiss.IndexFlatL2(dataset.d)
    r.add(dataset.xb)
    lo.add(dataset.xb)
    for make in (lambda f: f.IDSelectorBatch(keep), lambda f: f.IDSelectorArray(keep)):
        params_r = remote.SearchParameters(sel=make(remote))
        params_l = local_faiss.SearchParameters(sel=make(local_faiss))
        D, I = r.search(dataset.xq, 5, params=params_r)
        _same_knn(D, I, *lo.search(dataset.xq, 5, params=params_l))
        assert np.all(I % 3 == 0)
    not_sel = remote.IDSelectorNot(remote.IDSelectorRange(0, 2500))
    _D, I = r.search(dataset.xq, 5, params=remote.SearchParameters(sel=not_sel))
    assert np.all(I >= 2500)


def test_range_search(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    r = remote.IndexFlatL2(dataset.d)
    lo = local_faiss.IndexFlatL2(dataset.d)
    r.add(dataset.xb)
    lo.add(dataset.xb)
    lims_r, D_r, I_r = r.range_search(dataset.xq, 4.0)
    lims_l, D_l, I_l = lo.range_search(dataset.xq, 4.0)
    np.testing.assert_array_equal(lims_r, lims_l)
    assert lims_r[-1] > 0
    for q in range(len(dataset.xq)):
        s = slice(lims_l[q], lims_l[q + 1])
        assert sorted(I_r[s].tolist()) == sorted(I_l[s].tolist())


def test_kmeans(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    r = remote.Kmeans(dataset.d, 20, niter=10, seed=123)
    lo = local_faiss.Kmeans(dataset.d, 20, niter=10, seed=123)
    r.train(dataset.xt)
    lo.train(dataset.xt)
    assert isinstance(r.centroids, np.ndarray) and r.centroids.shape == (20, dataset.d)
    np.testing.assert_allclose(r.centroids, lo.centroids, rtol=1e-4, atol=1e-4)
    _same_knn(*r.index.search(dataset.xq, 1), *lo.index.search(dataset.xq, 1))
    Dr, Ir = r.assign(dataset.xq)
    Dl, Il = lo.assign(dataset.xq)
    np.testing.assert_array_equal(Ir, Il)


def test_module_functions(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    _same_knn(*remote.knn(dataset.xq, dataset.xb, 5), *local_faiss.knn(dataset.xq, dataset.xb, 5))
    np.testing.assert_allclose(
        remote.pairwise_distances(dataset.xq, dataset.xb[:50]),
        local_faiss.pairwise_distances(dataset.xq, dataset.xb[:50]),
        rtol=1e-5,
    )
    assert remote.METRIC_INNER_PRODUCT == local_faiss.METRIC_INNER_PRODUCT
    assert remote.omp_get_max_threads() >= 1
    np.testing.assert_array_equal(remote.rand(10, 5), local_faiss.rand(10, 5))


def test_clone_serialize_and_passing_objects(remote: ModuleType, local_faiss: ModuleType, dataset: Dataset) -> None:
    r = remote.index_factory(dataset.d, "IVF8,Flat")
    r.train(dataset.xt)
    r.add(dataset.xb)
    clone = remote.clone_index(r)
    assert clone.ntotal == r.ntotal
    blob = remote.serialize_index(r)
    assert isinstance(blob, np.ndarray) and blob.dtype == np.uint8
    lo = local_faiss.deserialize_index(blob)
    r.nprobe = lo.nprobe = 8
    clone.nprobe = 8
    _same_knn(*r.search(dataset.xq, 5), *lo.search(dataset.xq, 5))
    _same_knn(*clone.search(dataset.xq, 5), *lo.search(dataset.xq, 5))
    back = remote.deserialize_index(local_faiss.serialize_index(lo))
    back.nprobe = 8
    _same_knn(*back.search(dataset.xq, 5), *lo.search(dataset.xq, 5))
    # one remote object into another's constructor, and an object-valued attribute
    pre = remote.PCAMatrix(dataset.d, 16)
    chained = remote.IndexPreTransform(pre, remote.IndexFlatL2(16))
    chained.train(dataset.xt)
    chained.add(dataset.xb)
    assert chained.ntotal == len(dataset.xb)


def test_binary_index(remote: ModuleType, local_faiss: ModuleType) -> None:
    rs = np.random.RandomState(5)
    xb = rs.randint(0, 256, (2000, 16), dtype="uint8")
    xq = rs.randint(0, 256, (10, 16), dtype="uint8")
    r = remote.IndexBinaryFlat(128)
    lo = local_faiss.IndexBinaryFlat(128)
    r.add(xb)
    lo.add(xb)
    Dr, Ir = r.search(xq, 4)
    Dl, Il = lo.search(xq, 4)
    np.testing.assert_array_equal(Dr, Dl)
    blob = remote.serialize_index_binary(r)
    assert local_faiss.deserialize_index_binary(blob).ntotal == 2000


def test_parameter_space(remote: ModuleType, dataset: Dataset) -> None:
    index = remote.index_factory(dataset.d, "IVF8,Flat")
    index.train(dataset.xt)
    remote.ParameterSpace().set_index_parameter(index, "nprobe", 5)
    assert remote.extract_index_ivf(index).nprobe == 5
    remote.ParameterSpace().set_index_parameters(index, "nprobe=7")
    assert index.nprobe == 7


@pytest.mark.parametrize("dtype", ["float64", "int32"])
def test_wrong_dtype_like_local(remote: ModuleType, local_faiss: ModuleType, dtype: str, dataset: Dataset) -> None:
    """faiss's own wrappers convert or reject the same way remotely."""
    r = remote.IndexFlatL2(dataset.d)
    lo = local_faiss.IndexFlatL2(dataset.d)
    x = dataset.xb[:10].astype(dtype)
    r.add(x)
    lo.add(x)
    assert r.ntotal == lo.ntotal == 10
