"""The synthetic phantom: deterministic, two adjacent labelled structures, nnU-Net raw format."""
import json

import numpy as np
import pytest
from scipy import ndimage

from nnunet_sss.phantom import DEFAULT_SHAPE, LABELS, phantom_case, write_phantom_dataset


def test_same_seed_same_case_other_seed_other_case():
    image, label = phantom_case(3)
    image2, label2 = phantom_case(3)
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(label, label2)
    image3, label3 = phantom_case(4)
    assert not np.array_equal(label, label3)


@pytest.mark.parametrize("seed", range(6))
def test_two_adjacent_structures_inside_the_volume(seed):
    image, label = phantom_case(seed)
    assert image.shape == label.shape == DEFAULT_SHAPE
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2}
    # adjacent: the two labels share a face; each is one connected piece
    assert (ndimage.binary_dilation(label == 1) & (label == 2)).any()
    for k in (1, 2):
        assert ndimage.label(label == k)[1] == 1
    # the structure does not touch the border (random pose keeps it inside)
    border = np.ones_like(label, bool)
    border[1:-1, 1:-1, 1:-1] = False
    assert not (label[border] > 0).any()
    # an intensity model, not a label map: structures brighter than background, noisy, positive
    assert image.min() >= 0
    assert image[label == 1].mean() > image[label == 2].mean() > image[label == 0].mean()
    assert image[label == 0].std() > 0.05 * image[label == 0].mean()


def test_bias_field_changes_intensity_across_the_volume():
    without = phantom_case(7, bias=0.0)[0]
    with_bias = phantom_case(7, bias=0.3)[0]
    ratio = ndimage.gaussian_filter(with_bias, 4) / ndimage.gaussian_filter(without, 4)
    assert ratio.max() / ratio.min() > 1.2


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="three axes"):
        phantom_case(0, shape=(8, 32, 32))


def test_writes_nnunet_raw_format(tmp_path):
    import SimpleITK as sitk

    folder = write_phantom_dataset(tmp_path, dataset_id=991, name="Tiny", num_train=5, num_test=2,
                                   shape=(24, 28, 24), seed=1)
    assert folder.name == "Dataset991_Tiny"
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == LABELS and dataset["numTraining"] == 5 and dataset["file_ending"] == ".nii.gz"
    assert dataset["channel_names"] == {"0": "MRI"}
    train = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert train == [f"phantom_{i:03d}_0000.nii.gz" for i in range(5)]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["phantom_005.nii.gz", "phantom_006.nii.gz"]
    image = sitk.ReadImage(str(folder / "imagesTr" / "phantom_002_0000.nii.gz"))
    label = sitk.ReadImage(str(folder / "labelsTr" / "phantom_002.nii.gz"))
    assert image.GetSize() == label.GetSize() == (24, 28, 24)[::-1]
    assert image.GetSpacing() == (1.0, 1.0, 1.0)
    expected = phantom_case(np.random.SeedSequence(1).spawn(7)[2], (24, 28, 24))[1]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(label), expected)
    with pytest.raises(FileExistsError):
        write_phantom_dataset(tmp_path, dataset_id=991, name="Tiny", num_train=5)
