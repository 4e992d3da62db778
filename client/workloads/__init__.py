"""The workloads the engine drives, by name (`registry`): `http` (`http`, over the fast HTTP/1.1
client in `http_client`), `openai-chat` / `openai-completions` (`openai`, with `sse` and prompt
`datasets`) and `vectordb` (`vectordb/`: Qdrant, Chroma, pgvector). Plug-ins register through the
`aifb.workloads` entry point group."""
