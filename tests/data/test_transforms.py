import torch

from pneumolab.data.transforms import RandomGamma, RandomNoise, train_augmentation


def _image() -> torch.Tensor:
    return torch.linspace(20, 230, 48 * 48).reshape(1, 48, 48).round().to(torch.uint8)


def test_noise_and_gamma_keep_uint8_and_change_pixels():
    torch.manual_seed(0)
    image = _image()
    for transform in (RandomNoise(0.05), RandomGamma(1.5)):
        out = transform(image)
        assert out.dtype == torch.uint8 and out.shape == image.shape
        assert not torch.equal(out, image)


def test_noise_level_is_bounded():
    torch.manual_seed(0)
    image = torch.full((1, 64, 64), 128, dtype=torch.uint8)
    out = RandomNoise(0.02)(image).float()
    assert (out - 128).std() <= 0.02 * 255 * 1.2


def test_zero_strength_only_resizes():
    image = _image()
    assert torch.equal(train_augmentation(48, strength=0)(image), image)


def test_augmentation_is_random_but_seeded():
    image = _image()
    torch.manual_seed(1)
    first = train_augmentation(32)(image)
    torch.manual_seed(1)
    assert torch.equal(train_augmentation(32)(image), first)
    assert first.shape == (1, 32, 32)
