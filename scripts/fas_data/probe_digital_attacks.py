"""Can a small CNN tell the synthetic digital attacks from live faces?

The measurement behind docs/synthetic-data.md's "Digital attack strength":
a 4-layer CNN (PyTorch) trained with class-weighted cross-entropy on a P1
train split of a `fas_data::synth` dataset, then the AUC of each attack
category against the live images of the test split, per epoch.

    /tmp/venv/bin/pip install torch pillow numpy
    /tmp/venv/bin/python scripts/fas_data/probe_digital_attacks.py DATA_ROOT EPOCHS
"""
import sys, numpy as np, torch, torch.nn as nn
from PIL import Image
root = sys.argv[1]
def load(split):
    X, y, k = [], [], []
    for l in open(f"{root}/UniAttackData/protocol/UniAttackData@p1_image_{split}.txt"):
        p, lab = l.split(); lab = int(lab)
        X.append(np.asarray(Image.open(f"{root}/{p}").convert("RGB"), dtype=np.float32) / 255.0)
        y.append(0 if lab == 0 else 1); k.append(lab)
    return torch.tensor(np.stack(X)).permute(0, 3, 1, 2), torch.tensor(y), np.array(k)
Xtr, ytr, _ = load("train"); Xte, yte, kte = load("test")
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 2))
opt = torch.optim.Adam(net.parameters(), 1e-3)
w = torch.tensor([len(ytr) / (2 * (ytr == 0).sum()), len(ytr) / (2 * (ytr == 1).sum())]).float()
for epoch in range(int(sys.argv[2])):
    perm = torch.randperm(len(ytr))
    for i in range(0, len(ytr), 32):
        b = perm[i:i+32]; loss = nn.functional.cross_entropy(net(Xtr[b]), ytr[b], weight=w)
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        p = torch.softmax(net(Xte), 1)[:, 1].numpy()
    live = p[kte == 0]
    msg = [f"epoch {epoch}"]
    for c, name in [(1, "phys"), (2, "adv"), (3, "edit")]:
        a = p[kte == c]; msg.append(f"{name} AUC {(a[:, None] > live[None, :]).mean():.3f}")
    print(" ".join(msg), flush=True)
