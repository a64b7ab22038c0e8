-- Recipes: what each job does to its photo (jobcore.recipe.Recipe as JSON; NULL = the worker's
-- DEFAULT_RECIPE), every object the job wrote (`outputs`: a list of {name, bucket, key,
-- content_type, width, height, bytes}) and the background it used (`background_used`: for
-- `auto`, the colour chosen and the subject's luma). Nullable columns without defaults: adding
-- them only touches the catalog.
ALTER TABLE image_processing_jobs
    ADD COLUMN recipe jsonb,
    ADD COLUMN outputs jsonb,
    ADD COLUMN background_used jsonb;
