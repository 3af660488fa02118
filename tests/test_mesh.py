"""Mesh construction and the logical-axis rule table (golden PartitionSpecs on a 2x2x2 mesh)."""
import jax
import jax.numpy as jnp
import optax
import pytest
from jax.sharding import PartitionSpec as P

from scaling_jax.mesh import (DEFAULT_RULES, MeshError, batch_sharding, check_batch, logical_to_mesh_spec,
                              make_mesh, merge_rules, state_shardings_like_params)


def test_minus_one_takes_the_rest():
    mesh = make_mesh(-1, 2, 2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert dict(make_mesh().shape) == {"data": 8, "fsdp": 1, "tensor": 1}


def test_mesh_that_does_not_divide_the_devices_is_an_error():
    with pytest.raises(MeshError, match="3 does not divide the 8 devices"):
        make_mesh(-1, 3, 1)
    with pytest.raises(MeshError, match="= 12 devices, but 8 are available"):
        make_mesh(3, 2, 2)


GOLDEN = [  # (logical, shape, expected spec on data=2 x fsdp=2 x tensor=2)
    (("vocab", "embed"), (30522, 384), P("tensor", "fsdp")),
    (("embed", "heads"), (384, 384), P("fsdp", "tensor")),
    (("heads", "embed"), (384, 384), P("tensor", "fsdp")),
    (("embed", "mlp"), (384, 1536), P("fsdp", "tensor")),
    (("mlp", "embed"), (1536, 384), P("tensor", "fsdp")),
    (("norm",), (384,), P(None)),
    ((None, "embed"), (512, 384), P(None, "fsdp")),
    (("embed", "classes"), (384, 13), P("fsdp", None)),
    (("vocab", "embed"), (30521, 384), P(None, "fsdp")),  # odd vocab: replicated, not an error
]


@pytest.mark.parametrize("logical,shape,expected", GOLDEN)
def test_logical_rules_golden_specs(logical, shape, expected):
    mesh = make_mesh(2, 2, 2)
    assert logical_to_mesh_spec(P(*logical), shape, mesh, DEFAULT_RULES) == expected


def test_rules_are_configurable_and_checked():
    mesh = make_mesh(2, 2, 2)
    rules = merge_rules({"embed": None, "mlp": ["fsdp", "tensor"]})
    assert logical_to_mesh_spec(P("embed", "mlp"), (8, 16), mesh, rules) == P(None, ("fsdp", "tensor"))
    with pytest.raises(MeshError, match="unknown mesh axis 'model'"):
        merge_rules({"embed": "model"})


def test_batch_sharding_and_divisibility():
    mesh = make_mesh(2, 2, 2)
    assert batch_sharding(mesh).spec == P(("data", "fsdp"))
    check_batch(8, mesh)
    with pytest.raises(MeshError, match="batch size 6 does not divide over the mesh's batch axes"):
        check_batch(6, mesh)


def test_optimizer_state_follows_its_parameter():
    mesh = make_mesh(1, 4, 2)
    params = {"w": jnp.zeros((8, 4)), "b": jnp.zeros((4,))}
    specs = {"w": P("fsdp", "tensor"), "b": P()}
    params_sh = jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), specs,
                             is_leaf=lambda x: isinstance(x, P))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
    opt = jax.eval_shape(tx.init, params)
    opt_sh = state_shardings_like_params(opt, params, params_sh, mesh)
    adam = opt_sh[1][0]
    assert adam.mu["w"].spec == P("fsdp", "tensor") and adam.nu["w"].spec == P("fsdp", "tensor")
    assert adam.count.spec == P()
