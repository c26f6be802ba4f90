"""RFC 6962 / RFC 9162 Merkle tree: known vectors and properties."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airfed.ledger import merkle

# The RFC 6962 reference tree of certificate-transparency and
# transparency-dev/merkle: eight leaves, the root of every prefix, and proofs.
LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def _h(*hexes: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in hexes]


INCLUSION = [  # (index, size, proof)
    (
        0,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        _h(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        3,
        _h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    ),
    (
        1,
        5,
        _h(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]

CONSISTENCY = [  # (old_size, new_size, proof)
    (
        1,
        8,
        _h(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        _h(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        _h(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]


def test_empty_tree_hash_is_sha256_of_nothing() -> None:
    assert merkle.tree_root([]) == hashlib.sha256(b"").digest()
    assert merkle.EMPTY_ROOT.hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize("size", range(1, 9))
def test_root_of_every_prefix_matches_reference(size: int) -> None:
    assert merkle.tree_root(LEAVES[:size]) == ROOTS[size - 1]
    assert merkle.MemoryTree.from_entries(LEAVES[:size]).root() == ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_reference(
    index: int, size: int, proof: list[bytes]
) -> None:
    assert merkle.inclusion_proof(LEAVES[:size], index) == proof
    root = ROOTS[size - 1]
    assert merkle.verify_inclusion(LEAVES[index], index, size, proof, root)
    assert not merkle.verify_inclusion(LEAVES[index], index + 1, size, proof, root)
    assert not merkle.verify_inclusion(b"WrongLeaf", index, size, proof, root)
    assert not merkle.verify_inclusion(LEAVES[index], index, size * 2, proof, root)
    assert not merkle.verify_inclusion(LEAVES[index], index, size, proof[:-1], root)
    assert not merkle.verify_inclusion(LEAVES[index], index, size, [*proof, root], root)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_match_reference(
    old: int, new: int, proof: list[bytes]
) -> None:
    assert merkle.consistency_proof(LEAVES[:new], old) == proof
    old_root, new_root = ROOTS[old - 1], ROOTS[new - 1]
    assert merkle.verify_consistency(old, new, old_root, new_root, proof)
    assert not merkle.verify_consistency(old, new, new_root, old_root, proof)
    assert not merkle.verify_consistency(old + 1, new, old_root, new_root, proof)
    assert not merkle.verify_consistency(old, new, old_root, new_root, [])
    assert not merkle.verify_consistency(old, new, old_root, new_root, proof[:-1])
    assert not merkle.verify_consistency(
        old, new, old_root, new_root, [*proof, new_root]
    )


def test_trivial_consistency_needs_an_empty_proof() -> None:
    root = ROOTS[3]
    assert merkle.verify_consistency(4, 4, root, root, [])
    assert not merkle.verify_consistency(4, 4, root, ROOTS[2], [])
    assert not merkle.verify_consistency(4, 4, root, root, [root])
    assert merkle.verify_consistency(0, 4, merkle.EMPTY_ROOT, root, [])
    assert not merkle.verify_consistency(5, 4, root, root, [root])


def test_proof_arguments_outside_the_tree_are_refused() -> None:
    with pytest.raises(ValueError, match="not in a tree"):
        merkle.inclusion_proof(LEAVES[:3], 3)
    with pytest.raises(ValueError, match="no consistency proof"):
        merkle.consistency_proof(LEAVES[:3], 4)
    assert not merkle.verify_inclusion(LEAVES[0], 0, 0, [], merkle.EMPTY_ROOT)
    assert not merkle.verify_inclusion(LEAVES[0], 0, 1, [], b"short")


def test_compact_range_reports_the_perfect_subtrees_it_completes() -> None:
    compact = merkle.CompactRange()
    created: dict[tuple[int, int], bytes] = {}
    for entry in LEAVES:
        for level, index, digest in compact.append(merkle.leaf_hash(entry)):
            created[(level, index)] = digest
    tree = merkle.MemoryTree.from_entries(LEAVES)
    assert compact.root() == ROOTS[7]
    assert created == {
        (level, index): digest
        for level, hashes in enumerate(tree.levels)
        for index, digest in enumerate(hashes)
    }
    nodes = merkle.CompactRange.nodes_for(7)
    assert nodes == [(2, 0), (1, 2), (0, 6)]
    restored = merkle.CompactRange(7, tree.node_hashes(nodes))
    assert restored.root() == ROOTS[6]


entries_lists = st.lists(st.binary(max_size=12), min_size=1, max_size=70)


@settings(max_examples=150, deadline=None)
@given(entries=entries_lists, data=st.data())
def test_every_inclusion_proof_verifies_and_any_bit_flip_fails(
    entries: list[bytes], data: st.DataObject
) -> None:
    size = len(entries)
    index = data.draw(st.integers(0, size - 1))
    root = merkle.tree_root(entries)
    proof = merkle.inclusion_proof(entries, index)
    assert merkle.verify_inclusion(entries[index], index, size, proof, root)
    assert len(proof) <= max(1, size - 1).bit_length()

    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        bad = list(proof)
        bad[which] = _flip(bad[which], bit)
        assert not merkle.verify_inclusion(entries[index], index, size, bad, root)
    bit = data.draw(st.integers(0, 255))
    assert not merkle.verify_inclusion(
        entries[index], index, size, proof, _flip(root, bit)
    )


@settings(max_examples=150, deadline=None)
@given(entries=entries_lists, data=st.data())
def test_every_consistency_proof_verifies_and_any_bit_flip_fails(
    entries: list[bytes], data: st.DataObject
) -> None:
    new_size = len(entries)
    old_size = data.draw(st.integers(1, new_size))
    old_root = merkle.tree_root(entries[:old_size])
    new_root = merkle.tree_root(entries)
    proof = merkle.consistency_proof(entries, old_size)
    assert merkle.verify_consistency(old_size, new_size, old_root, new_root, proof)

    bit = data.draw(st.integers(0, 255))
    if proof:
        which = data.draw(st.integers(0, len(proof) - 1))
        bad = list(proof)
        bad[which] = _flip(bad[which], bit)
        assert not merkle.verify_consistency(
            old_size, new_size, old_root, new_root, bad
        )
    assert not merkle.verify_consistency(
        old_size, new_size, old_root, _flip(new_root, bit), proof
    )
    if old_size < new_size:
        assert not merkle.verify_consistency(
            old_size, new_size, _flip(old_root, bit), new_root, proof
        )


@settings(max_examples=60, deadline=None)
@given(entries=entries_lists)
def test_stored_subtrees_give_the_same_proofs_as_the_list_api(
    entries: list[bytes],
) -> None:
    tree = merkle.MemoryTree.from_entries(entries)
    size = len(entries)
    assert merkle.root_from(tree, size) == merkle.tree_root(entries)
    for old in range(1, size + 1):
        assert merkle.root_from(tree, old) == merkle.tree_root(entries[:old])
        assert merkle.consistency_proof_from(tree, old, size) == (
            merkle.consistency_proof(entries, old)
        )


def _flip(digest: bytes, bit: int) -> bytes:
    raw = bytearray(digest)
    raw[bit // 8] ^= 1 << (bit % 8)
    return bytes(raw)
