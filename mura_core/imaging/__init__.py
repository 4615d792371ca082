"""Images: decoding PNG / JPEG / DICOM files safely, and turning pixels into model tensors."""
