"""Reading inputs over fsspec and decoding images into upright RGB arrays."""
