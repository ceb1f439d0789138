"""The openai-agents package running one agent with one tool against a greengate gateway."""

from __future__ import annotations

import asyncio

import pytest


def run_weather_agent(base_url: str, api_key: str, model: str, streamed: bool
                      ) -> tuple[str, list[str]]:
    """Run an agent whose one tool says the weather; -> (final output, the tool's calls)."""
    agents = pytest.importorskip("agents")
    from openai import AsyncOpenAI

    agents.set_tracing_disabled(True)
    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"sunny in {city}"

    async def run() -> str:
        client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
        responses_model = agents.OpenAIResponsesModel(model=model, openai_client=client)
        agent = agents.Agent(name="weather", instructions="Use the tool.", tools=[get_weather],
                             model=responses_model)
        if streamed:
            result = agents.Runner.run_streamed(agent, "Weather in Paris?")
            async for _ in result.stream_events():
                pass
        else:
            result = await agents.Runner.run(agent, "Weather in Paris?")
        await client.close()
        return str(result.final_output)

    return asyncio.run(run()), calls
