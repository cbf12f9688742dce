"""The tasks: GSM8K and MATH (and the generated arithmetic word problems) as examples in the authors'
prompt/target format (data.py), answer extraction and grading (grading.py), and the exact arithmetic of
`<<expression=result>>` annotations (arith.py)."""
