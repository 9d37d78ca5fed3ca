from .mimic_eye import main

main()
