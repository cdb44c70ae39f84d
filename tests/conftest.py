"""Shared test helpers: real photographs that travel with the test dependencies.

scikit-image (a dev extra) ships its sample photos inside the package, so every clone and CI run
has them: no download, no ../shared folder, no skip.
"""
from __future__ import annotations

import pytest
import torch

# Boxes drawn by hand on the skimage photos (xyxy pixels, one class), for the tests that need a
# loss on real image content; checked by drawing them over the photos.
HAND_DRAWN_BOXES = {
    "astronaut": [[170.0, 55.0, 280.0, 170.0],     # her face
                  [275.0, 340.0, 505.0, 512.0]],   # the helmet in the bottom right corner
    "coffee": [[172.0, 18.0, 410.0, 305.0],        # the cup, handle included
               [322.0, 62.0, 425.0, 328.0]],       # the spoon
}


def skimage_photo(name: str) -> torch.Tensor:
    """A scikit-image sample photo as a [3, H, W] float tensor in 0..1."""
    from skimage import data

    return torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="session")
def real_photos() -> list[torch.Tensor]:
    """Three real photos of different sizes and aspect ratios: chelsea 300x451, coffee 400x600,
    rocket 427x640 (H x W)."""
    return [skimage_photo(name) for name in ("chelsea", "coffee", "rocket")]


@pytest.fixture(scope="session")
def real_sample() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two real photos (astronaut 512x512, coffee 400x600) and their hand-drawn boxes as targets (label 1)."""
    images, targets = [], []
    for name in ("astronaut", "coffee"):
        boxes = torch.tensor(HAND_DRAWN_BOXES[name])
        images.append(skimage_photo(name))
        targets.append({"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64)})
    return images, targets


@pytest.fixture(scope="session", autouse=True)
def no_sigchld_on_the_main_thread():
    """Once OpenVINO has run in a test process on a CPU with AVX512_BF16, the kernel could no
    longer deliver SIGCHLD to the main thread there: the next child process to exit (a `detector
    serve` the tests started) killed pytest with SIGSEGV (si_code SI_KERNEL, in clock_nanosleep).
    Nothing in a test needs SIGCHLD (subprocess waits with waitpid), so the main thread blocks
    it; `detector` itself never starts children after loading OpenVINO, and Ctrl-C after an
    OpenVINO run still raises KeyboardInterrupt (checked by hand)."""
    import signal

    previous = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)
