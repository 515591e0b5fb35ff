import pytest
import torch
from safetensors.torch import load_file

from featdiff.errors import UserError
from featdiff.models.encoders import load_encoder, save_encoder
from featdiff.models.resnet_cifar import resnet32


def test_save_then_load_restores_every_tensor(tmp_path):
    torch.manual_seed(0)
    model = resnet32(10)
    with torch.no_grad():  # non-default BN statistics, so buffers are checked too
        model.train()(torch.randn(8, 3, 32, 32))
    path = tmp_path / "sub" / "encoder.safetensors"
    save_encoder(model, path)
    assert [p.name for p in path.parent.iterdir()] == ["encoder.safetensors"]  # no temp file left
    loaded = load_encoder(path, 10)
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    assert all(torch.equal(loaded.state_dict()[k], expected[k]) for k in expected)
    assert load_file(path)["bn1.num_batches_tracked"].item() == 1


def test_shipped_encoder_has_exactly_our_keys(data_root):
    shipped = load_file(data_root / "ldmlr_resnet32_cifar10_lt_if100.safetensors")
    ours = resnet32(10).state_dict()
    assert shipped.keys() == ours.keys()
    assert all(shipped[k].shape == ours[k].shape for k in ours)


def test_wrong_num_classes_is_a_user_error_naming_file_and_fix(data_root):
    path = data_root / "ldmlr_resnet32_cifar10_lt_if100.safetensors"
    with pytest.raises(UserError) as error:
        load_encoder(path, 100)
    message = str(error.value)
    assert str(path) in message and "fc.weight" in message and "\n" not in message


def test_missing_keys_is_a_user_error(tmp_path):
    path = tmp_path / "partial.safetensors"
    model = resnet32(10)
    del model.fc
    save_encoder(model, path)
    with pytest.raises(UserError, match="missing tensors"):
        load_encoder(path, 10)


def test_missing_or_unreadable_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_encoder(tmp_path / "absent.safetensors", 10)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="junk.safetensors"):
        load_encoder(junk, 10)
