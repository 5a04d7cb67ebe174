"""Names that frameworks use without a call in this repository, for vulture's dead-code check (``make test``; the
configuration is ``[tool.vulture]`` in pyproject.toml). Keep it small: every entry must be called by a framework,
never just by a test. Registered architectures (``@register_model``) and pytest fixtures are ignored there by
decorator. Not collected by pytest (no ``test_`` prefix)."""
# ruff: noqa
_ = object

# Lightning: LightningModule / LightningDataModule / Callback hooks and their required arguments.
_.setup, _.prepare_data, _.train_dataloader, _.val_dataloader, _.configure_optimizers
_.training_step, _.validation_step, _.on_validation_epoch_end, _.on_load_checkpoint, _.on_save_checkpoint
_.on_fit_start, _.on_train_start, _.on_train_batch_start, _.on_train_batch_end
_.on_validation_start, _.on_validation_end, _.on_validation_batch_end, _.on_train_epoch_end
pl_module, batch_idx
_.should_stop  # Trainer attribute: set by callbacks to end the fit
# torchmetrics.Metric class attributes read by the Metric machinery.
_.full_state_update, _.higher_is_better
# torch DataLoader's worker_init_fn(worker_id).
worker_id
# ctypes callback signature (audiosep.speech: eSpeak NG's synth callback(wav, n, events)).
events
# signal.signal handler signature (handler(signum, frame)).
signum
# pickle.Unpickler hook (medseg.importers' restricted unpickler).
_.find_class
# PEP 562 module attributes (shared_backbones.blocks' lazy imports).
__getattr__, __dir__
# Attributes set on library objects: torchvision's ResNet head, rasterio's band scales, cuDNN's autotuner.
_.fc, _.scales, _.benchmark
# DICOM keywords set on pydicom datasets by the test and benchmark series builders (pydicom stores them as elements).
_.preamble, _.MediaStorageSOPClassUID, _.MediaStorageSOPInstanceUID, _.Modality, _.PatientID, _.PatientName
_.PatientBirthDate, _.PatientSex, _.StudyID, _.StudyDate, _.StudyTime, _.AccessionNumber, _.ReferringPhysicianName
_.InstanceNumber, _.Manufacturer, _.SeriesNumber, _.SeriesDescription, _.SliceThickness, _.PhotometricInterpretation
_.SamplesPerPixel, _.BitsAllocated, _.BitsStored, _.HighBit, _.PixelRepresentation, _.RescaleIntercept
_.RescaleSlope, _.PixelData
# Named by a string: ``class_path`` in pipelines/configs/phases.yaml (LightningCLI), and
# ``--model.class_path ddp_helpers.FailingOnRank1`` in tests/pipelines/test_distributed.py.
PhasesFilesDataModule, FailingOnRank1
