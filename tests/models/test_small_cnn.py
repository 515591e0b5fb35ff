import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from featdiff.evaluation.inference import normalize, predict_logits
from featdiff.models.small_cnn import SmallCNN


def test_interface_shapes():
    model = SmallCNN(num_classes=10, in_channels=1, feature_dim=32).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert model.features(x).shape == (5, 32) == (5, model.feature_dim)
        assert torch.equal(model.features_ldmlr(x), model.features(x))
        assert torch.allclose(model(x), model.fc(model.features(x)))


def test_trains_above_90_percent_on_sklearn_digits():
    digits = load_digits()  # 8×8 pixels with values 0..16, bundled with scikit-learn
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(images, digits.target, test_size=0.25, random_state=0, stratify=digits.target)
    x_train, x_test = torch.from_numpy(x_train), torch.from_numpy(x_test)
    y_train = torch.from_numpy(y_train)
    mean, std = [float(x_train.float().mean() / 255)], [float(x_train.float().std() / 255)]

    torch.manual_seed(0)
    model = SmallCNN(num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs = normalize(x_train, mean, std)
    for _ in range(8):
        for index in torch.randperm(len(inputs)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(inputs[index]), y_train[index]).backward()
            optimizer.step()

    logits = predict_logits(model, x_test, mean, std, device="cpu")
    assert accuracy_score(y_test, logits.argmax(1).numpy()) > 0.90
