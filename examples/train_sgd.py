"""Train a scikit-learn SGD classifier on the digits data set and log it to mltrack
live with the client in client/mltrack_client.py: no Django needed, only the client
module and scikit-learn.

    python manage.py create_api_token alice            # prints a token
    python examples/train_sgd.py --url http://127.0.0.1:8000 --token mlt_...

Press Stop on the run's page and the loop ends at the next epoch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "client"))

from mltrack_client import Run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", default=os.getenv("MLTRACK_URL", "http://127.0.0.1:8000")
    )
    parser.add_argument("--token", default=os.getenv("MLTRACK_TOKEN"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--name", default="sgd-digits")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or MLTRACK_TOKEN) is required")

    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import accuracy_score, log_loss
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    classes = np.unique(y)
    model = SGDClassifier(
        loss="log_loss",
        learning_rate="constant",
        eta0=args.learning_rate,
        alpha=1e-4,
        random_state=0,
    )
    rng = np.random.default_rng(0)
    params = {"model": "SGDClassifier", "eta0": args.learning_rate, "alpha": 1e-4}

    with Run(
        args.url,
        args.token,
        name=args.name,
        params=params,
        total_epochs=args.epochs,
        dataset="digits",
    ) as run:
        for epoch in range(1, args.epochs + 1):
            started = time.perf_counter()
            order = rng.permutation(len(x_train))
            model.partial_fit(x_train[order], y_train[order], classes=classes)
            run.log(
                epoch,
                train_loss=log_loss(
                    y_train, model.predict_proba(x_train), labels=classes
                ),
                val_loss=log_loss(y_val, model.predict_proba(x_val), labels=classes),
                train_accuracy=accuracy_score(y_train, model.predict(x_train)),
                val_accuracy=accuracy_score(y_val, model.predict(x_val)),
                learning_rate=args.learning_rate,
                epoch_seconds=time.perf_counter() - started,
            )
            if run.should_stop:
                print(f"Stop requested: ending after epoch {epoch}")
                break
    if run.error:
        print(f"mltrack refused the run: {run.error}", file=sys.stderr)
        return 1
    status = run.session["status"] if run.session else "unknown"
    print(f"Run {run.session_id}: {run.sent} epochs logged, {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
