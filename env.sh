export DATABASE_URL=postgres://postgres@127.0.0.1:5432/tesseract_trial
export REDIS_URL=redis://127.0.0.1:6399/0
