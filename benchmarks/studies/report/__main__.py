from benchmarks.studies.report.write import main

main()
